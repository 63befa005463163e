//! TLS 1.3 session tickets a server hands its clients to resume with: the session itself,
//! sealed (AES-256-GCM) with a key of the hour, so a server keeps no memory per session.
//! Keys are made in the process, or, in a mu-server fleet, shared through its Redis so that
//! a client resumes on any server of the fleet ([`Tickets::install`]).
//!
//! A ticket is `key name (16 random bytes) ‖ nonce (12) ‖ sealed session ‖ tag (16)`: nothing
//! in it but random-looking bytes, as it travels in the clear in the next ClientHello.

use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// How long a key seals new tickets; it opens them for one more such time, then is gone
/// (with it, what a leaked ticket could unseal).
pub const EPOCH: Duration = Duration::from_secs(3600);
/// Bytes of a key's name, at the start of each ticket it seals.
pub const NAME_LEN: usize = 16;
/// Bytes of a key.
pub const KEY_LEN: usize = 32;

/// One key: its name and the AEAD key, for the epoch (hours since 1970) it seals in.
struct Key {
    epoch: u64,
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

/// The sealing keys of a server's tickets.
pub struct Tickets {
    keys: RwLock<Vec<Key>>,
    /// Keys come from elsewhere ([`Tickets::install`]): none is made here.
    shared: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets").finish_non_exhaustive()
    }
}

impl Default for Tickets {
    fn default() -> Self {
        Tickets {
            keys: RwLock::new(Vec::new()),
            shared: false.into(),
        }
    }
}

/// The epoch of `at`: whole [`EPOCH`]s since 1970.
pub fn epoch_of(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / EPOCH.as_secs()
}

fn now() -> u64 {
    epoch_of(SystemTime::now())
}

impl Tickets {
    /// From now on, keys are only those installed (a fleet's): the process makes none.
    pub fn share(&self) {
        self.shared
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Installs the key of `epoch` (name and key bytes, as the fleet keeps them); keys more
    /// than one epoch older than the newest are dropped.
    pub fn install(&self, epoch: u64, name: [u8; NAME_LEN], key: &[u8; KEY_LEN]) {
        let Ok(unbound) = UnboundKey::new(&AES_256_GCM, key) else {
            return;
        };
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.retain(|k| k.epoch != epoch);
        keys.push(Key {
            epoch,
            name,
            key: LessSafeKey::new(unbound),
        });
        let newest = keys.iter().map(|k| k.epoch).max().unwrap_or(epoch);
        keys.retain(|k| k.epoch + 1 >= newest);
    }

    /// Makes the current epoch's key if this process makes its own and has none yet.
    fn make_current(&self, epoch: u64) {
        if self.shared.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        // Without randomness there is no key, and so no ticket: full handshakes go on.
        if let (Ok(name), Ok(key)) = (
            crate::random::bytes::<NAME_LEN>(),
            crate::random::bytes::<KEY_LEN>(),
        ) {
            self.install(epoch, name, &key);
        }
    }

    fn has_key_of(&self, epoch: u64) -> bool {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.iter().any(|k| k.epoch == epoch)
    }

    fn seal(&self, epoch: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        // The key of this epoch; in a fleet whose next key is not here yet, the newest.
        let key = keys.iter().find(|k| k.epoch == epoch).or_else(|| {
            let shared = self.shared.load(std::sync::atomic::Ordering::Relaxed);
            keys.iter()
                .filter(|k| shared && k.epoch + 1 >= epoch)
                .max_by_key(|k| k.epoch)
        })?;
        let nonce = crate::random::bytes::<NONCE_LEN>().ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let mut body = out.split_off(NAME_LEN + NONCE_LEN);
        let sealed = key.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&key.name),
            &mut body,
        );
        sealed.ok()?;
        out.append(&mut body);
        Some(out)
    }
}

impl rustls::server::ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        EPOCH.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let epoch = now();
        if !self.has_key_of(epoch) {
            // Nothing made in a fleet: its newest key seals until the next one comes.
            self.make_current(epoch);
        }
        self.seal(epoch, plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN + 16 {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let epoch = now();
        // Only the keys still in their time: a process whose key was not replaced (no
        // fleet key came) does not open tickets past it.
        let key = keys
            .iter()
            .find(|k| k.name == name && k.epoch + 1 >= epoch)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(name), &mut body)
            .ok()?;
        let n = plain.len();
        body.truncate(n);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    #[test]
    fn a_ticket_opens_where_its_key_is_and_nowhere_else() {
        let a = Tickets::default();
        let session = b"a session's secrets".to_vec();
        let t = a.encrypt(&session).expect("sealed");
        assert_eq!(t.len(), NAME_LEN + NONCE_LEN + session.len() + 16);
        assert!(
            !t.windows(session.len()).any(|w| w == session),
            "sealed in the clear"
        );
        assert_eq!(a.decrypt(&t), Some(session.clone()));
        // Two tickets of one session differ (a new nonce each).
        assert_ne!(a.encrypt(&session), Some(t.clone()));
        // Another process's key: not opened.
        let b = Tickets::default();
        assert_eq!(b.decrypt(&t), None);
        // Any change: not opened.
        for at in [0, NAME_LEN, NAME_LEN + NONCE_LEN, t.len() - 1] {
            let mut bad = t.clone();
            bad[at] ^= 1;
            assert_eq!(a.decrypt(&bad), None, "changed at {at}");
        }
        assert_eq!(a.decrypt(&t[..NAME_LEN + NONCE_LEN + 15]), None);
    }

    #[test]
    fn a_fleet_shares_keys_and_drops_old_ones() {
        let (name, key) = ([7u8; NAME_LEN], [9u8; KEY_LEN]);
        let (a, b) = (Tickets::default(), Tickets::default());
        for t in [&a, &b] {
            t.share();
            t.install(now(), name, &key);
        }
        let ticket = a.encrypt(b"s").expect("sealed");
        assert_eq!(b.decrypt(&ticket), Some(b"s".to_vec()));
        // Without an installed key of its time, a fleet server seals nothing (it makes none).
        let c = Tickets::default();
        c.share();
        assert_eq!(c.encrypt(b"s"), None);
        // A key two epochs old is dropped when a newer one comes, and opens nothing.
        c.install(now() - 2, name, &key);
        assert_eq!(
            c.decrypt(&ticket),
            None,
            "a key past its time opened a ticket"
        );
        c.install(now(), [1; NAME_LEN], &[2; KEY_LEN]);
        assert_eq!(c.keys.read().expect("keys").len(), 1);
        // The previous epoch's key still opens its tickets.
        let d = Tickets::default();
        d.share();
        d.install(now() - 1, name, &key);
        d.install(now(), [1; NAME_LEN], &[2; KEY_LEN]);
        assert_eq!(d.decrypt(&ticket), Some(b"s".to_vec()));
        let fresh = d.encrypt(b"t").expect("sealed");
        assert_eq!(&fresh[..NAME_LEN], &[1; NAME_LEN], "sealed with an old key");
    }
}
