//! The operating system's own calls, one module per OS (`unix`, `windows`) behind one small
//! interface: socket options no safe crate offers, the runtime's registration of UDP sockets,
//! Unix-domain listeners, Android's VPN socket protection, stop and reload signals, private
//! files, and the process's ties to its parent. The rest of the crate names no OS; what one
//! OS lacks fails here with an error that says so (configuration refuses the flag first).
//! The one place of the crate with unsafe code.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;
