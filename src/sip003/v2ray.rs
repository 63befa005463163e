//! v2ray-plugin's option strings, understood as they are: a shadowsocks configuration made
//! for v2ray-plugin (`tls;host=…;path=…;mux=…`) runs mtt with the same meaning, so either end
//! can be swapped without touching the other. Its keys become mtt's options (then its flags),
//! with v2ray-plugin's defaults: WebSocket on, no TLS without `tls`, path `/`, host
//! `cloudfront.com`, Mux.Cool with one stream per connection (`mux=1`) on clients.

use crate::{Error, Result};

/// Options only v2ray-plugin has: one of them makes the string v2ray-plugin's.
/// (`fwmark` is both dialects' word, with one meaning.)
const ITS_OWN: [&str; 9] = [
    "tls",
    "host",
    "path",
    "mode",
    "certRaw",
    "loglevel",
    "server",
    "fastOpen",
    "serviceName",
];

/// Pairs that say the same thing in both dialects: both in one string cannot be meant.
const SAME_THING: [(&str, &str, &str); 10] = [
    ("host", "n", "the server name"),
    ("host", "wss-host", "the WebSocket Host header"),
    ("path", "wss-path", "the WebSocket path"),
    ("mode", "wss", "the transport"),
    ("mode", "grpc", "the transport"),
    ("serviceName", "grpc-service", "the gRPC service"),
    ("tls", "disable-tls", "whether TLS is used"),
    ("loglevel", "verbose", "how much is logged"),
    ("mux", "mux-proto", "the multiplexing"),
    ("mux", "mux-max-stream", "the streams per connection"),
];

type Options = Vec<(String, Option<String>)>;

/// Whether `options` are v2ray-plugin's: one of its own keys, or its `mux=N` (a count, where
/// mtt's `mux` is a switch), or on a client its `cert` (a CA there; mtt clients have none).
pub fn is_v2ray(options: &Options, server: bool) -> bool {
    options.iter().any(|(k, v)| {
        ITS_OWN.contains(&k.as_str())
            || (k == "mux" && v.as_deref().is_some_and(|v| v.parse::<u32>().is_ok()))
            || (!server && k == "cert")
    })
}

/// mtt's options for a v2ray-plugin option string, for a server or a client; `home`: where
/// v2ray-plugin looks for acme.sh's certificates (`~/.acme.sh/HOST/`) when `tls` names none.
/// `certRaw` (a CA given inline, for Android) is written to `raw_ca` when given.
pub fn translate(
    options: &Options,
    server: bool,
    home: Option<&str>,
    raw_ca: &mut dyn FnMut(&str) -> Result<String>,
) -> Result<Options> {
    let get = |key: &str| {
        options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone().unwrap_or_default())
    };
    for (theirs, ours, what) in SAME_THING {
        let mtt_mux = theirs == "mux" && get("mux").is_some_and(|v| v.parse::<u32>().is_err());
        if get(theirs).is_some() && get(ours).is_some() && !mtt_mux {
            return Err(Error::usage(format!(
                "SS_PLUGIN_OPTIONS: '{theirs}' (v2ray-plugin's) and '{ours}' (mtt's) both set {what}: keep one"
            )));
        }
    }
    let mut out: Options = Vec::new();
    let mut put = |k: &str, v: Option<String>| out.push((k.to_string(), v));
    let grpc = get("mode").as_deref() == Some("grpc");
    match get("mode").as_deref() {
        None | Some("websocket") | Some("") => put("wss", None),
        // teddysun's v2ray-plugin: gun, without Mux.Cool inside.
        Some("grpc") => put("grpc", None),
        Some("quic") => {
            return Err(Error::usage(
                "SS_PLUGIN_OPTIONS: mode=quic is v2ray-plugin's QUIC transport, which mtt does not carry: use mode=websocket (its default) on both ends",
            ));
        }
        Some(other) => {
            return Err(Error::usage(format!(
                "SS_PLUGIN_OPTIONS: mode={other}: v2ray-plugin's modes are websocket and grpc (mtt carries both) and quic (it does not)"
            )));
        }
    }
    let tls = get("tls").is_some();
    let host = get("host").unwrap_or_else(|| "cloudfront.com".into());
    if grpc {
        put(
            "grpc-service",
            Some(get("serviceName").unwrap_or_else(|| "GunService".into())),
        );
    } else {
        put("wss-path", Some(get("path").unwrap_or_else(|| "/".into())));
    }
    if let Some(level) = get("loglevel")
        && level == "debug"
    {
        put("verbose", None);
    }
    if get("fastOpen").is_some() {
        put("fast-open", None);
    }
    if server {
        if !tls {
            put("disable-tls", None);
        } else {
            let acme = |file: String| home.map(|h| format!("{h}/.acme.sh/{host}/{file}"));
            let cert = get("cert").or_else(|| acme("fullchain.cer".into()));
            let key = get("key").or_else(|| acme(format!("{host}.key")));
            put("cert", cert);
            put("key", key);
        }
    } else {
        if get("server").is_some() {
            return Err(Error::usage(
                "SS_PLUGIN_OPTIONS: 'server' makes v2ray-plugin a server; mtt takes its role from its name: start mtt-server (or 'mtt server') as the server's plugin",
            ));
        }
        let tls_keys = ["n", "cert-sha256", "ca", "sv"];
        if let Some(ours) = tls_keys.iter().find(|k| get(k).is_some()).filter(|_| !tls) {
            let theirs = options
                .iter()
                .map(|(k, _)| k.as_str())
                .find(|k| ITS_OWN.contains(k) || *k == "mux" || *k == "cert")
                .unwrap_or("mux");
            return Err(Error::usage(format!(
                "SS_PLUGIN_OPTIONS: '{theirs}' makes these v2ray-plugin's options, which without 'tls' mean no TLS, but '{ours}' (mtt's) sets TLS up: add 'tls', or write mtt's options only (wss-path, wss-host, n, …)"
            )));
        }
        if tls {
            put("n", Some(host));
            if let Some(ca) = get("cert").filter(|c| !c.is_empty()) {
                put("ca", Some(ca));
            } else if let Some(raw) = get("certRaw").filter(|c| !c.is_empty()) {
                put("ca", Some(raw_ca(&raw)?));
            }
        } else {
            put("disable-tls", None);
            if !grpc {
                put("wss-host", Some(host));
            }
        }
        let streams = match get("mux") {
            None => 1,
            Some(n) => n.parse::<u32>().map_err(|_| {
                Error::usage(format!(
                    "SS_PLUGIN_OPTIONS: mux={n}: v2ray-plugin's mux is a count of streams per connection (0: none)"
                ))
            })?,
        };
        if streams > 16 {
            return Err(Error::usage(format!(
                "SS_PLUGIN_OPTIONS: mux={streams}: at most 16 streams share a connection here (mtt servers take 16); give mux=16 or less"
            )));
        }
        // v2ray-plugin multiplexes WebSocket only; HTTP/2 multiplexes by itself.
        if streams > 0 && !grpc {
            put("mux", None);
            put("mux-proto", Some("mux.cool".into()));
            put("mux-max-stream", Some(streams.to_string()));
        }
    }
    // mtt's own keys that v2ray-plugin has no word for (a pin, timeouts, udp) pass through,
    // and `fwmark`, which both have.
    let theirs = [
        "mode", "tls", "host", "path", "loglevel", "fastOpen", "cert", "key",
    ];
    let theirs_too = ["certRaw", "mux", "server", "serviceName"];
    for (k, v) in options {
        if !theirs.contains(&k.as_str()) && !theirs_too.contains(&k.as_str()) {
            out.push((k.clone(), v.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Options {
        super::super::parse_options(s).expect("options")
    }

    fn no_raw(_: &str) -> Result<String> {
        Err(Error::usage("unexpected"))
    }

    fn client(s: &str) -> Result<Options> {
        translate(&opts(s), false, Some("/home/u"), &mut no_raw)
    }

    fn server(s: &str) -> Result<Options> {
        translate(&opts(s), true, Some("/home/u"), &mut no_raw)
    }

    fn keys(o: &Options) -> Vec<String> {
        o.iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect()
    }

    #[test]
    fn which_strings_are_v2ray_plugins() {
        assert!(is_v2ray(&opts("tls;host=a.example"), false));
        assert!(is_v2ray(&opts("mux=4"), false));
        assert!(is_v2ray(&opts("cert=/ca.pem"), false));
        assert!(!is_v2ray(&opts("cert=/c.pem;key=/k.pem;wss"), true));
        assert!(!is_v2ray(&opts("wss;mux;n=x"), false));
        assert!(!is_v2ray(&opts(""), false));
    }

    #[test]
    fn a_clients_string_with_its_defaults() {
        assert_eq!(
            keys(&client("tls;host=a.example;path=/ws;mux=8;cert-sha256=ab").expect("ok")),
            [
                "wss",
                "wss-path=/ws",
                "n=a.example",
                "mux",
                "mux-proto=mux.cool",
                "mux-max-stream=8",
                "cert-sha256=ab"
            ]
        );
        // Without tls: plain WebSocket to cloudfront.com's Host, one stream per connection.
        assert_eq!(
            keys(&client("").expect("ok")),
            [
                "wss",
                "wss-path=/",
                "disable-tls",
                "wss-host=cloudfront.com",
                "mux",
                "mux-proto=mux.cool",
                "mux-max-stream=1"
            ]
        );
        assert_eq!(
            keys(&client("tls;host=h;mux=0;cert=/ca.pem;loglevel=debug").expect("ok")),
            ["wss", "wss-path=/", "verbose", "n=h", "ca=/ca.pem"]
        );
    }

    /// teddysun's v2ray-plugin `mode=grpc`: gun with its service name (default GunService),
    /// no Mux.Cool inside (it multiplexes WebSocket only), TLS as in websocket mode.
    #[test]
    fn grpc_mode_strings() {
        assert_eq!(
            keys(&client("mode=grpc;tls;host=a.example;serviceName=Svc;mux=4").expect("ok")),
            ["grpc", "grpc-service=Svc", "n=a.example"]
        );
        assert_eq!(
            keys(&client("mode=grpc").expect("ok")),
            ["grpc", "grpc-service=GunService", "disable-tls"]
        );
        assert_eq!(
            keys(&server("server;mode=grpc;tls;host=a.example;cert=/c;key=/k").expect("ok")),
            ["grpc", "grpc-service=GunService", "cert=/c", "key=/k"]
        );
        let e = client("mode=grpc;serviceName=A;grpc-service=B")
            .unwrap_err()
            .report()
            .to_string();
        assert!(
            e.contains("'serviceName'") && e.contains("'grpc-service'"),
            "{e}"
        );
        assert!(is_v2ray(&opts("serviceName=Svc"), false));
    }

    #[test]
    fn a_servers_string_with_its_defaults() {
        assert_eq!(
            keys(&server("server;tls;host=a.example;path=/ws").expect("ok")),
            [
                "wss",
                "wss-path=/ws",
                "cert=/home/u/.acme.sh/a.example/fullchain.cer",
                "key=/home/u/.acme.sh/a.example/a.example.key"
            ]
        );
        assert_eq!(
            keys(&server("server;mux=4").expect("ok")),
            ["wss", "wss-path=/", "disable-tls"]
        );
    }

    #[test]
    fn what_cannot_be_meant_is_refused_naming_both() {
        let e = client("path=/a;wss-path=/b")
            .unwrap_err()
            .report()
            .to_string();
        assert!(e.contains("'path'") && e.contains("'wss-path'"), "{e}");
        let e = client("host=a;n=b").unwrap_err().report().to_string();
        assert!(e.contains("'host'") && e.contains("'n'"), "{e}");
        let e = client("mode=quic").unwrap_err().report().to_string();
        assert!(e.contains("QUIC") && e.contains("mode=websocket"), "{e}");
        let e = client("server;tls").unwrap_err().report().to_string();
        assert!(e.contains("mtt-server"), "{e}");
        let e = client("tls;mux=32").unwrap_err().report().to_string();
        assert!(e.contains("16"), "{e}");
        let e = client("wss;path=/old;n=x")
            .unwrap_err()
            .report()
            .to_string();
        assert!(
            e.contains("'path'") && e.contains("'n'") && e.contains("wss-path"),
            "{e}"
        );
        let marked = keys(&client("tls;fwmark=7").expect("fwmark is both dialects'"));
        assert!(marked.contains(&"fwmark=7".to_string()), "{marked:?}");
    }

    #[test]
    fn an_inline_ca_is_written_for_the_client() {
        let mut written = String::new();
        let mut raw = |r: &str| {
            written = r.to_string();
            Ok("/run/ca.pem".to_string())
        };
        let o = translate(&opts("tls;host=h;certRaw=MIIB"), false, None, &mut raw).expect("ok");
        assert_eq!(written, "MIIB");
        assert!(keys(&o).contains(&"ca=/run/ca.pem".to_string()));
    }
}
