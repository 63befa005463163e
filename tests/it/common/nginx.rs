//! nginx as a test peer: started with a configuration of the test, stopped when dropped.

use super::*;

/// nginx from Debian, run in the foreground with its own configuration in a temp dir.
pub struct Nginx {
    pub dir: tempfile::TempDir,
    site: Option<tempfile::TempDir>,
    child: std::process::Child,
}

impl Nginx {
    /// Starts nginx with `http_block` (the inside of `http { }`); waits until `port` accepts.
    pub async fn start(http_block: &str, port: u16) -> Nginx {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log info;\npid {d}/nginx.pid;\nevents {{ worker_connections 512; }}\nhttp {{\naccess_log off;\nclient_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\nfastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n{http_block}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = std::process::Command::new("nginx")
            .args(["-c", &path_str(&path), "-p", &path_str(dir.path())])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start nginx (install the nginx package)");
        wait_listening(SocketAddr::from(([127, 0, 0, 1], port))).await;
        Nginx {
            dir,
            site: None,
            child,
        }
    }

    /// nginx serving `index_html` as a static site on a free loopback port; returns it and
    /// the port (the site's files live in nginx's temp dir).
    pub async fn static_site(index_html: &str) -> (Nginx, u16) {
        let port = free_port();
        let site = tempfile::tempdir().expect("tmp");
        std::fs::write(site.path().join("index.html"), index_html).expect("write");
        let mut nginx = Nginx::start(
            &format!(
                "server {{ listen 127.0.0.1:{port}; root {}; }}",
                site.path().display()
            ),
            port,
        )
        .await;
        nginx.site = Some(site);
        (nginx, port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
