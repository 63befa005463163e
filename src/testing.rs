//! What the integration tests, fuzz targets and benchmarks reach inside the library, listed on
//! purpose and under the modules' own paths (`mtt::testing::transport::Dialer`), so that the
//! rest stays crate-private and the compiler reports code nothing uses. Not a stable API.

pub use crate::{Error, Result};

/// Addresses.
pub mod addr {
    pub use crate::addr::HostPort;
}

/// Certificates.
pub mod certs {
    pub use crate::certs::{CertSource, Validity, provider};
    /// PEM files.
    pub mod pem {
        pub use crate::certs::pem::{load_certs, self_signed};
    }
    /// Fingerprints.
    pub mod fingerprint {
        pub use crate::certs::fingerprint::sha256;
    }
}

/// The command line.
pub mod cli {
    pub use crate::cli::{ClientArgs, ServerArgs};
}

/// Dispatch on argv.
pub mod cmd {
    pub use crate::cmd::dispatch;
}

/// Validated configuration.
pub mod config {
    pub use crate::config::{
        ClientConfig, Listen, MuServerConfig, ServerConfig, UDP_ASSOC_RATE, UdpConfig, parse_pin,
    };
}

/// Go-style flags.
pub mod goflag {
    pub use crate::goflag::{Parsed, parse};
}

/// The roles.
pub mod role {
    /// The client.
    pub mod client {
        pub use crate::role::client::Client;
    }
    /// The server.
    pub mod server {
        pub use crate::role::server::Server;
    }
    /// The multi-user server.
    pub mod mu_server {
        pub use crate::role::mu_server::MuServer;
    }
    /// The controller's wire.
    pub mod controller {
        pub use crate::role::controller::{decode_compat, user_id};
    }
}

/// SIP003 options.
pub mod sip003 {
    pub use crate::sip003::{command_line, escape, parse_options};
}

/// Socket options.
pub mod sys {
    pub use crate::sys::tcp_fastopen_listener;
}

/// The users table.
pub mod users {
    pub use crate::users::check;
}

/// The layers of a tunnel.
pub mod transport {
    pub use crate::transport::{BoxIo, Dialer, Listener, datagram, options};
    /// TCP.
    pub mod tcp {
        pub use crate::transport::tcp::{DialOpts, bind_tcp_with, connect, connect_with};
    }
    /// The TLS client.
    pub mod tls {
        pub use crate::transport::tls::TlsClient;
    }
    /// UDP frames.
    pub mod udp {
        pub use crate::transport::udp::{FrameReader, MAX_DATAGRAM};
    }
    /// WebSocket.
    pub mod ws {
        pub use crate::transport::ws::{
            Role, WsStream, accept_key, encode_header, parse_header, upgrade_request,
        };
    }
    /// gRPC tunnels.
    pub mod grpc {
        pub use crate::transport::grpc::message::{Decoder, encode};
        pub use crate::transport::grpc::server::{MAX_HEADERS, MAX_STREAMS};
        pub use crate::transport::grpc::{
            CONNECTION_WINDOW, DEFAULT_SERVICE, STREAM_WINDOW, Service,
        };
    }
    /// Multiplexing.
    pub mod mux {
        pub use crate::transport::mux::{Muxing, Quiet, ServerSession};
        /// Mux.Cool, v2ray's.
        pub mod muxcool {
            pub use crate::transport::mux::muxcool::{Config, DEFAULT, MuxCoolSession};
        }
        /// smux, the original's multiplexer.
        pub mod smux {
            pub use crate::transport::mux::smux::{Config, DEFAULT, SmuxSession, frame};
        }
    }
}
