//! The command-line surface: one argh struct per role, with the original's flag names and
//! defaults. Values stay strings here; [`crate::config`] validates them with messages that
//! name the flag.

use argh::{ArgsInfo, FromArgs};

/// Defines a role's argh struct from its own flags and the named flag groups, each group
/// written once here (argh has no flattening): `with [acme, limits]` appends those groups'
/// fields, in that order, after the role's own.
macro_rules! role_args {
    ($(#[$meta:meta])* pub struct $name:ident { $($own:tt)* } with [$($group:ident),*]) => {
        role_args!(@build [$(#[$meta])*] $name [$($own)*] [$($group)*]);
    };
    (@build [$($meta:tt)*] $name:ident [$($f:tt)*] []) => {
        $($meta)*
        pub struct $name { $($f)* }
    };
    // the certificate a server presents (or none, behind a TLS-terminating proxy) and its listener
    (@build $meta:tt $name:ident [$($f:tt)*] [server_tls $($rest:ident)*]) => {
        role_args!(@build $meta $name [$($f)*
            /// file: PEM certificate chain (with -key; both empty: a self-signed certificate)
            #[argh(option, arg_name = "file")]
            pub cert: Option<String>,
            /// file: PEM private key: PKCS#8, PKCS#1 or SEC1
            #[argh(option, arg_name = "file")]
            pub key: Option<String>,
            /// name of the self-signed certificate (default: a random name)
            #[argh(option, arg_name = "name")]
            pub n: Option<String>,
            /// serve without TLS, behind a TLS-terminating proxy
            #[argh(switch)]
            pub disable_tls: bool,
            /// listen on a Unix socket: -b is a path, or @name for an abstract socket
            #[argh(switch)]
            pub bind_unix: bool,
        ] [$($rest)*]);
    };
    // certificates obtained and renewed through ACME
    (@build $meta:tt $name:ident [$($f:tt)*] [acme $($rest:ident)*]) => {
        impl $name {
            /// The `-acme*` flags, for [`crate::config`] to check.
            pub(crate) fn acme_flags(&self) -> crate::config::AcmeFlags<'_> {
                crate::config::AcmeFlags {
                    names: &self.acme,
                    email: &self.acme_email,
                    dir: &self.acme_dir,
                    directory: &self.acme_directory,
                    ca: &self.acme_ca,
                }
            }
        }
        role_args!(@build $meta $name [$($f)*
            /// obtain and renew the certificate for these names through ACME (Let's Encrypt), answering TLS-ALPN-01 on this port
            #[argh(option, arg_name = "name[,name]")]
            pub acme: Option<String>,
            /// contact address of the ACME account
            #[argh(option, arg_name = "address")]
            pub acme_email: Option<String>,
            /// where the ACME account and certificates are kept (default $STATE_DIRECTORY/acme under systemd, else ./acme)
            #[argh(option, arg_name = "dir")]
            pub acme_dir: Option<String>,
            /// ACME directory URL (default Let's Encrypt)
            #[argh(option, arg_name = "url")]
            pub acme_directory: Option<String>,
            /// file: trust this PEM root for the ACME server's own HTTPS (a private ACME CA)
            #[argh(option, arg_name = "file")]
            pub acme_ca: Option<String>,
        ] [$($rest)*]);
    };
    // what a WebSocket server does with requests that are not tunnels, and early data
    (@build $meta:tt $name:ident [$($f:tt)*] [web $($rest:ident)*]) => {
        role_args!(@build $meta $name [$($f)*
            /// with -wss (always on a mu-server): send requests that are not tunnels to this web server instead of a 404
            #[argh(option, arg_name = "host:port")]
            pub fallback: Option<String>,
            /// take a resumed client's first bytes before its TLS handshake is done (0-RTT) and, with -wss (always on a mu-server), riding its upgrade request (?ed=): on (default) or off
            #[argh(option, arg_name = "on|off")]
            pub early_data: Option<String>,
            /// how long the -fallback site may take to answer before the visitor gets 504 (default -handshake-timeout plus 5s)
            #[argh(option)]
            pub fallback_timeout: Option<String>,
        ] [$($rest)*]);
    };
    // who the client is behind proxies, and telling the destination
    (@build $meta:tt $name:ident [$($f:tt)*] [proxy $($rest:ident)*]) => {
        role_args!(@build $meta $name [$($f)*
            /// believe these proxies (CIDR[,CIDR…]) about the client behind them: in the header of -trusted-proxy-header, or a PROXY header with -accept-proxy-protocol
            #[argh(option, arg_name = "cidr[,cidr]")]
            pub trusted_proxy: Option<String>,
            /// the one header a -trusted-proxy writes the client into: X-Forwarded-For (default), X-Real-IP or Forwarded; others are ignored
            #[argh(option, arg_name = "name")]
            pub trusted_proxy_header: Option<String>,
            /// connections from -trusted-proxy addresses start with a PROXY v1/v2 header (haproxy send-proxy, load balancers)
            #[argh(switch)]
            pub accept_proxy_protocol: bool,
            /// send the destination a PROXY v2 header with the client's address before the first byte
            #[argh(switch)]
            pub proxy_protocol: bool,
        ] [$($rest)*]);
    };
    // carrying UDP
    (@build $meta:tt $name:ident [$($f:tt)*] [udp $($rest:ident)*]) => {
        role_args!(@build $meta $name [$($f)*
            /// carry UDP too: datagrams ride tunnels of their own beside TCP (SIP003u in plugin mode)
            #[argh(switch)]
            pub udp: bool,
            /// a UDP association with no datagram either way for this long is closed (default 60s)
            #[argh(option)]
            pub udp_timeout: Option<String>,
        ] [$($rest)*]);
    };
    // Prometheus metrics
    (@build $meta:tt $name:ident [$($f:tt)*] [metrics $($rest:ident)*]) => {
        role_args!(@build $meta $name [$($f)*
            /// serve Prometheus metrics at http://ADDR/metrics
            #[argh(option, arg_name = "host:port")]
            pub metrics: Option<String>,
        ] [$($rest)*]);
    };
    // limits, timeouts and logging every role shares
    (@build $meta:tt $name:ident [$($f:tt)*] [limits $($rest:ident)*]) => {
        role_args!(@build $meta $name [$($f)*
            /// refuse connections beyond this many at once (default 0: no limit)
            #[argh(option)]
            pub max_conns: Option<String>,
            /// how long live tunnels may finish after SIGINT/SIGTERM (default 30s)
            #[argh(option)]
            pub drain_timeout: Option<String>,
            /// how long a TLS handshake, a WebSocket upgrade or an HTTP request head may take (default 10s)
            #[argh(option)]
            pub handshake_timeout: Option<String>,
            /// keepalive of WebSocket tunnels: a ping this often; a peer silent for two intervals is taken as gone (default 30s; 0: off)
            #[argh(option, arg_name = "duration")]
            pub ping: Option<String>,
            /// enable TCP fast open (Linux)
            #[argh(switch)]
            pub fast_open: bool,
            /// mark the tunnel's sockets for policy routing (SO_MARK, Linux, needs CAP_NET_ADMIN): a client's to its server, a server's listener (so its replies) and its connections to destinations (default 0: none)
            #[argh(option, arg_name = "n")]
            pub fwmark: Option<String>,
            /// log every connection
            #[argh(switch)]
            pub verbose: bool,
        ] [$($rest)*]);
    };
}

/// mtt: a fast, trustworthy TLS tunnel.
// Only argh reads this and `Command`: they render the top-level help; dispatch is by name.
#[allow(dead_code)]
#[derive(FromArgs, ArgsInfo, Debug)]
pub struct Top {
    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
    #[argh(subcommand)]
    pub cmd: Option<Command>,
}

/// The roles and tools of the one `mtt` binary.
#[allow(dead_code)]
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand)]
pub enum Command {
    Client(ClientArgs),
    Server(ServerArgs),
    MuServer(MuServerArgs),
    Cert(CertArgs),
    Bench(BenchArgs),
}

role_args! {
    /// listen locally and carry each accepted TCP connection to an mtt server over TLS
    #[derive(FromArgs, ArgsInfo, Debug, Default)]
    #[argh(subcommand, name = "client")]
    pub struct ClientArgs {
        /// local address to listen on, e.g. 127.0.0.1:1080
        #[argh(option, arg_name = "host:port")]
        pub b: Option<String>,
        /// server address
        #[argh(option, arg_name = "host:port")]
        pub s: Option<String>,
        /// server name: TLS SNI and the name verified in the certificate (default: host of -s)
        #[argh(option, arg_name = "name")]
        pub n: Option<String>,
        /// skip verification of the server's certificate chain and name (dangerous)
        #[argh(switch)]
        pub sv: bool,
        /// no TLS: WebSocket (or TCP) as it is, for a server behind a TLS-terminating proxy on a trusted path (v2ray-plugin without tls)
        #[argh(switch)]
        pub disable_tls: bool,
        /// trust this PEM CA (or self-signed certificate) instead of the public roots
        #[argh(option, arg_name = "file")]
        pub ca: Option<String>,
        /// accept only the server certificate with this SHA-256 fingerprint
        #[argh(option, arg_name = "hex")]
        pub cert_sha256: Option<String>,
        /// ALPN of plain-TLS tunnels, comma-separated (default h2,http/1.1, as browsers; "none": no ALPN, as mos-tls-tunnel)
        #[argh(option, arg_name = "list")]
        pub alpn: Option<String>,
        /// offer TLS 1.2 too, for a server without TLS 1.3 (no ECH then)
        #[argh(switch)]
        pub tls12: bool,
        /// a full TLS handshake for every connection: keep no sessions to resume
        #[argh(switch)]
        pub no_resume: bool,
        /// a resumed TLS handshake carries the tunnel's first bytes (0-RTT early data): on (default) or off
        #[argh(option, arg_name = "on|off")]
        pub early_data: Option<String>,
        /// encrypted client hello (ECH) with the server's ECHConfigList (base64, its DNS HTTPS record's ech= value)
        #[argh(option, arg_name = "base64")]
        pub ech_config: Option<String>,
        /// encrypted client hello (ECH) with the ECHConfigList of the HTTPS record of -n, fetched at start (through -fallback-dns when given)
        #[argh(switch)]
        pub ech_dns: bool,
        /// idle timeout of a tunnel: no bytes either way for this long closes it (default 5m)
        #[argh(option)]
        pub timeout: Option<String>,
        /// use WebSocket over TLS
        #[argh(switch)]
        pub wss: bool,
        /// path of the WebSocket upgrade request (default "/"); "/ws?ed=2048": early data, the first write of up to 2048 bytes rides the upgrade
        #[argh(option)]
        pub wss_path: Option<String>,
        /// the Host header of the WebSocket upgrade, when it must differ from -n (a CDN's host)
        #[argh(option, arg_name = "name")]
        pub wss_host: Option<String>,
        /// extra header of the WebSocket upgrade, 'Name: value' (repeatable)
        #[argh(option, arg_name = "'Name: value'")]
        pub wss_header: Vec<String>,
        /// use gRPC over HTTP/2 (Xray's and v2fly's "gun"): tunnels are streams of shared connections
        #[argh(switch)]
        pub grpc: bool,
        /// gRPC service name (default GunService), or Xray's custom path /a/b/Tun
        #[argh(option, arg_name = "name")]
        pub grpc_service: Option<String>,
        /// tunnels one gRPC connection carries at once, 1 - 128 (default 100)
        #[argh(option, arg_name = "n")]
        pub grpc_max_streams: Option<String>,
        /// multiplex connections over shared server connections
        #[argh(switch)]
        pub mux: bool,
        /// max streams per multiplexed connection, 1 - 16 (default 4)
        #[argh(option)]
        pub mux_max_stream: Option<String>,
        /// how long a multiplexed connection without streams is kept for the next ones (default 10s)
        #[argh(option)]
        pub mux_idle: Option<String>,
        /// multiplexing protocol: yamux (mtt servers; default), smux (mos-tls-tunnel servers) or mux.cool (v2ray-plugin servers)
        #[argh(option)]
        pub mux_proto: Option<String>,
        /// UDP associations at once; beyond, the longest idle is dropped (default 1024)
        #[argh(option)]
        pub udp_max_assoc: Option<String>,
        /// new UDP associations per second (each dials a tunnel); datagrams from new sources beyond it are dropped (default 200, 0: no limit)
        #[argh(option)]
        pub udp_assoc_rate: Option<String>,
        /// resolve host names through this DNS server
        #[argh(option, arg_name = "ip:port")]
        pub fallback_dns: Option<String>,
    } with [udp, metrics, limits]
}

role_args! {
    /// end the tunnel: accept TLS connections and carry each to one destination
    #[derive(FromArgs, ArgsInfo, Debug, Default)]
    #[argh(subcommand, name = "server")]
    pub struct ServerArgs {
        /// address to listen on (a socket path with -bind-unix)
        #[argh(option, arg_name = "host:port")]
        pub b: Option<String>,
        /// destination address
        #[argh(option, arg_name = "host:port")]
        pub d: Option<String>,
        /// idle timeout of a tunnel: no bytes either way for this long closes it (default 5m)
        #[argh(option)]
        pub timeout: Option<String>,
        /// use WebSocket over TLS
        #[argh(switch)]
        pub wss: bool,
        /// path of the WebSocket upgrade request (default "/")
        #[argh(option)]
        pub wss_path: Option<String>,
        /// take gRPC tunnels over HTTP/2 too (Xray's and v2fly's "gun"; beside -wss on one port, by ALPN)
        #[argh(switch)]
        pub grpc: bool,
        /// gRPC service name (default GunService), or Xray's custom path /a/b/Tun|TunMulti
        #[argh(option, arg_name = "name")]
        pub grpc_service: Option<String>,
        /// multiplex: every connection is a session of streams
        #[argh(switch)]
        pub mux: bool,
        /// resolve the host name of -d through this DNS server
        #[argh(option, arg_name = "ip:port")]
        pub fallback_dns: Option<String>,
    } with [server_tls, acme, web, proxy, udp, metrics, limits]
}

role_args! {
    /// many users on one TLS port, routed by WebSocket path, managed through a controller
    #[derive(FromArgs, ArgsInfo, Debug, Default)]
    #[argh(subcommand, name = "mu-server")]
    pub struct MuServerArgs {
        /// data listen address
        #[argh(option, arg_name = "host:port")]
        pub b: Option<String>,
        /// controller listen address (default 127.0.0.1:8080; beyond loopback needs -c-token)
        #[argh(option, arg_name = "host:port")]
        pub c: Option<String>,
        /// default to multiplexing for clients that send no subprotocol
        #[argh(switch)]
        pub mux: bool,
        /// take gRPC tunnels too: a user's service is its path (/alice: calls /alice/Tun)
        #[argh(switch)]
        pub grpc: bool,
        /// idle timeout of a tunnel (default 1m)
        #[argh(option)]
        pub timeout: Option<String>,
        /// bearer token the controller requires (or MTT_CONTROLLER_TOKEN)
        #[argh(option)]
        pub c_token: Option<String>,
        /// keep users in this file: loaded at start, every change saved before it is acknowledged
        #[argh(option, arg_name = "file")]
        pub users_file: Option<String>,
        /// keep users in Redis, shared by a fleet of mu-servers: redis://[user:pass@]host:port/db, or rediss:// for TLS
        #[argh(option, arg_name = "url")]
        pub users_redis: Option<String>,
        /// prefix of the Redis keys and channel (default "mtt:")
        #[argh(option, arg_name = "prefix")]
        pub users_redis_prefix: Option<String>,
        /// how often the local table is compared with Redis, and fetched whole if it differs (default 30s)
        #[argh(option, arg_name = "duration")]
        pub users_redis_resync: Option<String>,
        /// file: a copy of the Redis table kept here, to start from while Redis cannot be reached
        #[argh(option, arg_name = "file")]
        pub users_redis_snapshot: Option<String>,
        /// file: trust this PEM root for rediss:// (a private CA) instead of the public roots
        #[argh(option, arg_name = "file")]
        pub users_redis_ca: Option<String>,
    } with [server_tls, acme, web, proxy, udp, limits]
}

/// write a self-signed certificate and key for a server and print its SHA-256 pin
#[derive(FromArgs, ArgsInfo, Debug, Default)]
#[argh(subcommand, name = "cert")]
pub struct CertArgs {
    /// name (DNS name or IP address) the certificate is for
    #[argh(option, arg_name = "name")]
    pub n: Option<String>,
    /// directory to write NAME.crt and NAME.key into (default: the current directory)
    #[argh(option)]
    pub out: Option<String>,
}

/// run a server, a client and a destination in this process on loopback and measure them
#[derive(FromArgs, ArgsInfo, Debug, Default)]
#[argh(subcommand, name = "bench")]
pub struct BenchArgs {
    /// modes to measure beside direct loopback, comma-separated: tls, wss, tls+mux, wss+mux, grpc (default: all)
    #[argh(option)]
    pub modes: Option<String>,
    /// mebibytes pushed each way by the single stream, and by all streams together (default 256)
    #[argh(option)]
    pub size: Option<String>,
    /// parallel streams of the aggregate test (default 16)
    #[argh(option)]
    pub streams: Option<String>,
    /// new connections timed for the latency test (default 200)
    #[argh(option)]
    pub conns: Option<String>,
}
