//! The accepting side of TLS: the server's configurations (ALPN chosen by what the hello
//! offered), its sessions (sealed tickets, or kept here for 0-RTT), and the handshake.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::early::{self, ServerTls};
use super::{SEND_BUFFER, agreed, within};
use crate::certs::{CertStore, provider};
use crate::transport::io::Io;
use crate::transport::tickets::Tickets;
use crate::{Error, Result};

/// Tickets sent after each handshake (each the session, sealed: [`crate::transport::tickets`], or with
/// 0-RTT a key to a session kept here): two, so a client's stock grows to meet bursts of new
/// tunnels (one would only keep it level).
const TICKETS: usize = 2;

/// Early data (0-RTT) a resumed client may send in its first flight: one record, as much
/// as a client's first write fills in one go.
pub const EARLY_DATA_MAX: u32 = 16 * 1024;

/// Sessions a server keeps for 0-RTT resumption, each taken once (oldest forgotten first):
/// about 250 bytes each (a 32-byte key, the session's ~100 bytes, the map's and the order's
/// entries), so at most about 2 MiB. A client keeps 32 tickets of a server
/// ([`super::hello`]), so this many serve every stock of about 250 busy clients; a client
/// whose ticket was forgotten makes a full handshake.
pub const SESSIONS_KEPT: usize = 8192;

/// The accepting side of TLS.
#[derive(Clone)]
pub struct TlsServer {
    base: Arc<rustls::ServerConfig>,
    /// Configurations that answer one ALPN protocol, chosen when the client offers it
    /// (`mtt-udp`, `mtt-mux2`); a client that offers none of them gets `base`, which never
    /// fails a handshake over ALPN.
    extra: Vec<(Vec<u8>, Arc<rustls::ServerConfig>)>,
    handshake: Duration,
    tickets: Arc<Tickets>,
}

/// What a client's hello offered and what was chosen.
#[derive(Debug, Clone, Default)]
pub struct Negotiated {
    /// The ALPN protocols the client offered.
    pub offered: Vec<Vec<u8>>,
    /// The protocol agreed, if any.
    pub chosen: Option<Vec<u8>>,
    /// Key exchange, cipher suite and version agreed, for the connection's log line.
    pub agreed: String,
}

impl Negotiated {
    /// Whether the client offered `p`.
    pub fn offers(&self, p: &[u8]) -> bool {
        self.offered.iter().any(|o| o == p)
    }
}

impl TlsServer {
    /// Builds the server configuration around `store`; `alpn` lists the protocols offered
    /// (none in plain mode: a server must not require ALPN, original clients send none), and
    /// each protocol of `extra` is answered when a client offers it; handshakes that take
    /// longer than `handshake` fail. With `zero_rtt`, sessions are kept here, each resumed
    /// once, and a resumed client's early data is taken ([`early`]); without it they
    /// travel sealed in the tickets (any server holding the keys resumes them: a fleet).
    pub fn with_extra(
        store: Arc<CertStore>,
        alpn: &[&[u8]],
        extra: &[&[u8]],
        handshake: Duration,
        zero_rtt: bool,
    ) -> Result<Self> {
        // One sealer (or one store) for every configuration: a session resumes whichever
        // ALPN it offers.
        let tickets = Arc::new(Tickets::default());
        let kept: Arc<dyn rustls::server::StoresServerSessions> = if zero_rtt {
            Arc::new(super::sessions::SingleUse::new(SESSIONS_KEPT))
        } else {
            Arc::new(rustls::server::NoServerSessionStorage {})
        };
        let config = |alpn: &[&[u8]]| -> Result<Arc<rustls::ServerConfig>> {
            let mut c = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(Error::Tls)?
                .with_no_client_auth()
                .with_cert_resolver(store.clone());
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            if zero_rtt {
                // rustls takes early data only with sessions kept here, each taken once:
                // a replayed first flight finds its session gone.
                c.max_early_data_size = EARLY_DATA_MAX;
                c.send_half_rtt_data = true;
            } else {
                // Sessions travel in the tickets: none is kept here (TLS 1.2 clients get
                // them in tickets too, RFC 5077).
                c.ticketer = tickets.clone();
            }
            c.session_storage = kept.clone();
            c.send_tls13_tickets = TICKETS;
            Ok(Arc::new(c))
        };
        let extra = extra
            .iter()
            .map(|p| Ok((p.to_vec(), config(&[p])?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(TlsServer {
            base: config(alpn)?,
            extra,
            handshake,
            tickets,
        })
    }

    /// The keys of this server's session tickets (a fleet shares them).
    pub fn tickets(&self) -> &Arc<Tickets> {
        &self.tickets
    }

    /// Runs the handshake over `io` within the handshake timeout, saying what the client's
    /// hello offered and what was agreed. A resumed client's early data is taken: the stream
    /// is then handed back as soon as the server's flight is out, its first bytes readable,
    /// and the handshake finishes underneath, within the same timeout.
    pub async fn negotiate<S: Io>(&self, io: S) -> io::Result<(ServerTls<S>, Negotiated)> {
        let deadline = tokio::time::Instant::now() + self.handshake;
        let handshake = async {
            let (accepted, io) = early::hello(io).await?;
            let offered: Vec<Vec<u8>> = accepted
                .client_hello()
                .alpn()
                .map(|ps| ps.map(<[u8]>::to_vec).collect())
                .unwrap_or_default();
            let config = self
                .extra
                .iter()
                .find(|(p, _)| offered.iter().any(|o| o == p))
                .map_or_else(|| self.base.clone(), |(_, c)| c.clone());
            let tls = early::finish(accepted, io, config, deadline, SEND_BUFFER).await?;
            Ok((tls, offered))
        };
        let (tls, offered) = within(self.handshake, handshake).await?;
        let Some(conn) = tls.connection() else {
            return Err(io::Error::other(
                "TLS stream in no state after its handshake",
            ));
        };
        let chosen = conn.alpn_protocol().map(<[u8]>::to_vec);
        let mut agreed = agreed(conn);
        if tls.is_early() {
            agreed += " 0-RTT";
        }
        Ok((
            tls,
            Negotiated {
                offered,
                chosen,
                agreed,
            },
        ))
    }
}
