//! A UDP socket that the runtime wakes for arriving datagrams only (on Unix; see
//! `sys::UdpIo`): sends are plain non-blocking calls that wait for room only when the send
//! buffer is full; bursts go down in one call where the kernel segments them (GSO) and come up
//! several per call (`recvmmsg`).

use std::io;
#[cfg(target_os = "linux")]
use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};

/// A non-blocking UDP socket, readable through the runtime, written directly.
#[derive(Debug)]
pub struct Socket {
    fd: crate::sys::UdpIo,
    /// Whether sending several datagrams in one call (UDP GSO) still works on this socket.
    gso: AtomicBool,
}

/// Receive buffer asked for a socket that datagrams arrive on in bursts (the client's
/// listener, the server's socket towards a destination). The system default (about 208 KiB,
/// some 150 datagrams of 1,400 bytes: a millisecond at 1.5 Gbit/s) loses datagrams whenever
/// the process is off the CPU that long; this is bounded by `net.core.rmem_max`, and memory
/// is taken only by datagrams actually waiting.
pub const RECV_BUFFER: usize = 4 << 20;

/// Asks for [`RECV_BUFFER`]; a refusal only costs datagrams under load.
pub fn widen_receive_buffer(sock: &socket2::Socket) {
    if let Err(e) = sock.set_recv_buffer_size(RECV_BUFFER) {
        log::debug!("UDP SO_RCVBUF: {e}");
    }
}

/// At most this many datagrams go down in one call (the kernel's limit is 64 or more).
pub const MAX_SEGMENTS: usize = 64;
/// And at most this many bytes (one IP packet's worth before segmentation).
const MAX_SEGMENTED: usize = 65_000;

impl Socket {
    /// Takes over a bound (maybe connected) socket.
    pub fn from_std(sock: UdpSocket) -> io::Result<Self> {
        Ok(Socket {
            fd: crate::sys::UdpIo::new(sock)?,
            gso: AtomicBool::new(cfg!(target_os = "linux")),
        })
    }

    /// A socket of `to`'s family on an ephemeral port, connected to `to`: it sends there and
    /// hears from there only; with room for a burst (see [`RECV_BUFFER`]).
    pub fn connected(to: SocketAddr) -> io::Result<Self> {
        let any: SocketAddr = if to.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let sock =
            socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::DGRAM, None)?;
        widen_receive_buffer(&sock);
        sock.bind(&any.into())?;
        sock.connect(&to.into())?;
        Self::from_std(sock.into())
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    /// Waits for a datagram from the connected peer.
    #[cfg(test)]
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd.read(|s| s.recv(buf)).await
    }

    /// Waits until a datagram (or an error) waits to be taken with [`Socket::try_recv`].
    pub async fn readable(&self) -> io::Result<()> {
        self.fd.readable().await
    }

    /// A datagram already waiting, if any (`WouldBlock` if none).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd.try_read(|s| s.recv(buf))
    }

    /// Waits for a datagram from anyone.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.fd.read(|s| s.recv_from(buf)).await
    }

    /// Waits for datagrams from anyone and takes as many as are waiting, up to the batch's
    /// room, in one call where the system allows (`recvmmsg`).
    pub async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        self.fd.read(|s| batch.fill(s)).await
    }

    /// Sends `buf` to the connected peer.
    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.write(|s| s.send(buf)).await
    }

    /// Sends `buf` to `to`.
    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.write(|s| s.send_to(buf, to)).await
    }

    /// Sends each of `datagrams` as a datagram of its own, in order, to the connected peer or
    /// to `to`. Runs of one size (the last of a run may be shorter) go down in one call where
    /// the kernel segments them (UDP GSO); where it cannot, one call per datagram. An
    /// unreachable peer (ICMP) is not an error: later datagrams may reach it.
    pub async fn send_all(&self, datagrams: &[&[u8]], to: Option<SocketAddr>) -> io::Result<()> {
        let mut rest = datagrams;
        while let Some(first) = rest.first() {
            let run = run_len(rest);
            if run > 1 && self.gso.load(Ordering::Relaxed) {
                match self
                    .write(|s| send_segments(s, &rest[..run], first.len(), to))
                    .await
                {
                    Ok(_) => {
                        rest = &rest[run..];
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        rest = &rest[run..];
                        continue;
                    }
                    // No GSO here (an old kernel, a path MTU below the size, a tunnel
                    // device): one call per datagram from now on.
                    Err(e) => {
                        log::debug!("UDP: sending in segments failed ({e}); one by one from now");
                        self.gso.store(false, Ordering::Relaxed);
                    }
                }
            }
            for d in &rest[..run] {
                let sent = match to {
                    Some(to) => self.send_to(d, to).await,
                    None => self.send(d).await,
                };
                match sent {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(e),
                }
            }
            rest = &rest[run..];
        }
        Ok(())
    }

    /// Runs `op` at once; only if the send buffer is full does it wait for room.
    async fn write(&self, op: impl Fn(&UdpSocket) -> io::Result<usize>) -> io::Result<usize> {
        self.fd.write(op).await
    }
}

/// Room for up to [`MAX_SEGMENTS`] received datagrams of up to `slot` bytes each (one more
/// than the largest accepted, so that a longer one shows as too long), and who sent each.
pub struct RecvBatch {
    buf: Vec<u8>,
    slot: usize,
    got: Vec<(usize, SocketAddr)>,
}

impl RecvBatch {
    /// Room for datagrams up to `slot` bytes. The memory is taken from the system as zero
    /// pages, so only the parts datagrams actually fill become resident.
    pub fn new(slot: usize) -> Self {
        RecvBatch {
            buf: vec![0; slot * MAX_SEGMENTS],
            slot,
            got: Vec::with_capacity(MAX_SEGMENTS),
        }
    }

    /// The datagrams of the last receive, with their senders.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.got
            .iter()
            .enumerate()
            .map(|(i, &(n, from))| (&self.buf[i * self.slot..i * self.slot + n], from))
    }

    /// Receives what is waiting: `WouldBlock` if nothing.
    #[cfg(target_os = "linux")]
    fn fill(&mut self, s: &UdpSocket) -> io::Result<usize> {
        use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
        use std::io::IoSliceMut;
        use std::os::fd::AsRawFd;
        self.got.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .buf
            .chunks_exact_mut(self.slot)
            .map(|c| [IoSliceMut::new(c)])
            .collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
        let got = recvmmsg(
            s.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        for m in got {
            let from = m
                .address
                .and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|a| SocketAddr::from(std::net::SocketAddrV4::from(*a)))
                        .or_else(|| {
                            a.as_sockaddr_in6()
                                .map(|a| SocketAddr::from(std::net::SocketAddrV6::from(*a)))
                        })
                })
                .ok_or_else(|| io::Error::other("a datagram without a sender's address"))?;
            // A datagram longer than the slot arrives cut to it: it still counts as too long.
            let n = if m.flags.contains(MsgFlags::MSG_TRUNC) {
                self.slot
            } else {
                m.bytes.min(self.slot)
            };
            self.got.push((n, from));
        }
        Ok(self.got.len())
    }

    /// Elsewhere one datagram per call.
    #[cfg(not(target_os = "linux"))]
    fn fill(&mut self, s: &UdpSocket) -> io::Result<usize> {
        self.got.clear();
        let (n, from) = s.recv_from(&mut self.buf[..self.slot])?;
        self.got.push((n, from));
        Ok(1)
    }
}

/// How many of `datagrams` (at least one) can go down in one segmented call: the same size as
/// the first, except the last, which may be shorter; within the kernel's limits.
fn run_len(datagrams: &[&[u8]]) -> usize {
    let Some(first) = datagrams.first() else {
        return 0;
    };
    let size = first.len();
    if size == 0 {
        return 1;
    }
    let mut n = 1;
    let mut total = size;
    for d in &datagrams[1..] {
        if n == MAX_SEGMENTS || d.len() > size || total + d.len() > MAX_SEGMENTED {
            break;
        }
        n += 1;
        total += d.len();
        if d.len() < size {
            break;
        }
    }
    n
}

/// One `sendmsg` carrying `segs` to be cut by the kernel every `size` bytes.
#[cfg(target_os = "linux")]
fn send_segments(
    s: &UdpSocket,
    segs: &[&[u8]],
    size: usize,
    to: Option<SocketAddr>,
) -> io::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
    use std::os::fd::AsRawFd;
    let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS];
    for (slot, seg) in iov.iter_mut().zip(segs) {
        *slot = IoSlice::new(seg);
    }
    let size = u16::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let cmsg = [ControlMessage::UdpGsoSegments(&size)];
    let to = to.map(SockaddrStorage::from);
    sendmsg(
        s.as_raw_fd(),
        &iov[..segs.len()],
        &cmsg,
        MsgFlags::empty(),
        to.as_ref(),
    )
    .map_err(io::Error::from)
}

/// Elsewhere there is no segmentation offload: the caller sends one by one.
#[cfg(not(target_os = "linux"))]
fn send_segments(
    _s: &UdpSocket,
    _segs: &[&[u8]],
    _size: usize,
    _to: Option<SocketAddr>,
) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams go both ways between a connected and an unconnected socket; a send that finds
    /// the buffer full waits for room instead of failing.
    #[tokio::test]
    async fn sends_and_receives_and_waits_for_room() {
        let server = Socket::from_std(UdpSocket::bind("127.0.0.1:0").expect("bind")).expect("s");
        let to = server.local_addr().expect("addr");
        let client = Socket::connected(to).expect("connected");
        let mut buf = [0u8; 64];
        assert_eq!(
            client.try_recv(&mut buf).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
        client.send(b"ping").await.expect("send");
        let (n, from) = server.recv_from(&mut buf).await.expect("recv_from");
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from, client.local_addr().expect("addr"));
        server.send_to(b"pong", from).await.expect("send_to");
        assert_eq!(client.recv(&mut buf).await.expect("recv"), 4);
        assert_eq!(&buf[..4], b"pong");

        // A send that finds the buffer full waits for writability and is then made.
        let tried = std::sync::atomic::AtomicUsize::new(0);
        let n = server
            .write(|s| {
                if tried.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                s.send_to(b"again", from)
            })
            .await
            .expect("send after waiting");
        assert_eq!(n, 5);
        assert_eq!(tried.into_inner(), 2, "tried once, then once writable");
        assert_eq!(client.recv(&mut buf).await.expect("recv"), 5);
        assert_eq!(&buf[..5], b"again");
    }

    /// A socket towards a destination holds a burst far beyond the system's default buffer
    /// (about 150 datagrams of 1,400 bytes) while its reader is away: a download at 1 Gbit/s
    /// lost 8-12 % of its datagrams here before.
    #[tokio::test]
    async fn a_socket_towards_a_destination_holds_a_burst() {
        let dest = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sock = Socket::connected(dest.local_addr().expect("addr")).expect("connected");
        dest.connect(sock.local_addr().expect("addr"))
            .expect("connect");
        let cap: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(RECV_BUFFER);
        // The kernel grants twice the size asked for and charges a 1,400-byte datagram
        // well under 4 KiB: a burst of this many fits with room to spare.
        let burst = RECV_BUFFER.min(cap) / 4096;
        for i in 0..burst {
            dest.send(&[i as u8; 1400]).expect("send");
        }
        let mut buf = [0u8; 2048];
        let mut got = 0;
        // Everything sent is already waiting: a lost datagram shows as a receive that waits.
        while got < burst {
            let wait = std::time::Duration::from_secs(2);
            let Ok(n) = tokio::time::timeout(wait, sock.recv(&mut buf)).await else {
                break;
            };
            let n = n.expect("recv");
            assert_eq!(buf[..n], [got as u8; 1400], "datagram {got} in order");
            got += 1;
        }
        assert_eq!(got, burst, "datagrams lost from a burst of {burst}");
    }

    /// A run of one size (the last shorter) goes in one segmented call and arrives as the
    /// same datagrams, in order; other sizes split the run; an empty datagram goes alone.
    #[tokio::test]
    async fn runs_go_down_segmented_and_arrive_as_sent() {
        let a: Vec<u8> = vec![1; 1400];
        let b: Vec<u8> = vec![2; 700];
        let c: Vec<u8> = vec![3; 2000];
        assert_eq!(run_len(&[&a, &a, &a, &b, &a]), 4);
        assert_eq!(run_len(&[&a, &c]), 1);
        assert_eq!(run_len(&[&[], &[]]), 1);
        assert_eq!(
            run_len(&[c.as_slice(); 40]),
            32,
            "at most 65,000 bytes in one call"
        );
        assert_eq!(run_len(&[b.as_slice(); 100]), MAX_SEGMENTS);

        let rx = Socket::from_std(UdpSocket::bind("127.0.0.1:0").expect("bind")).expect("rx");
        let tx = Socket::from_std(UdpSocket::bind("127.0.0.1:0").expect("bind")).expect("tx");
        let sent: Vec<Vec<u8>> = (0u8..10)
            .map(|i| vec![i; 1400])
            .chain([vec![10; 300], vec![], vec![11; 2000], vec![12; 2000]])
            .collect();
        let refs: Vec<&[u8]> = sent.iter().map(|d| d.as_slice()).collect();
        let to = rx.local_addr().expect("addr");
        tx.send_all(&refs, Some(to)).await.expect("send_all");
        if cfg!(target_os = "linux") {
            assert!(tx.gso.load(Ordering::Relaxed), "segmentation fell back");
        }
        let mut buf = vec![0u8; 4096];
        for d in &sent {
            let (n, _) = rx.recv_from(&mut buf).await.expect("recv");
            assert_eq!(&buf[..n], d.as_slice());
        }
    }

    /// Datagrams waiting from two senders come in one batch, in order, each with its sender;
    /// one longer than the slot shows at the slot's length (too long), not cut silently.
    #[tokio::test]
    async fn a_batch_takes_what_waits_with_senders_and_marks_the_too_long() {
        let rx = Socket::from_std(UdpSocket::bind("127.0.0.1:0").expect("bind")).expect("rx");
        let to = rx.local_addr().expect("addr");
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind b");
        a.send_to(b"one", to).expect("send");
        b.send_to(b"two!", to).expect("send");
        a.send_to(&[7u8; 300], to).expect("send");
        let mut batch = RecvBatch::new(100);
        let mut seen: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
        while seen.len() < 3 {
            let n = rx.recv_batch(&mut batch).await.expect("recv_batch");
            assert_eq!(n, batch.iter().count());
            seen.extend(batch.iter().map(|(d, from)| (d.to_vec(), from)));
        }
        let (a, b) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        assert_eq!(seen[0], (b"one".to_vec(), a));
        assert_eq!(seen[1], (b"two!".to_vec(), b));
        assert_eq!(
            seen[2].0.len(),
            100,
            "a datagram longer than the slot shows as too long"
        );
        assert_eq!(seen[2].1, a);
    }
}
