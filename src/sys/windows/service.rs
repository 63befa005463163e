//! Windows: running as a service of the Service Control Manager (`sc.exe create NAME binPath=
//! "C:\…\mtt.exe server …"`). The process says it runs, turns a stop (or the system's
//! shutdown) into the same drain as Ctrl-C, and reports its exit code when it ends. Started
//! otherwise (its parent is not the manager's `services.exe`), it runs as usual without
//! asking the manager anything: asking costs a console run seconds where the manager's pipe
//! is busy.

use std::ffi::OsString;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::{define_windows_service, service_dispatcher};

/// A stop asked by the manager; taken by `StopRequests` (a permit waits if nobody listens yet).
pub(super) static STOP: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// How long the manager is told a stop may take: the default `-drain-timeout` and a margin.
const STOP_HINT: Duration = Duration::from_secs(35);

static MAIN: OnceLock<fn() -> i32> = OnceLock::new();
static STATUS: OnceLock<ServiceStatusHandle> = OnceLock::new();
static CODE: AtomicI32 = AtomicI32::new(0);

define_windows_service!(ffi_service_main, service_main);

/// Runs `main` as a service when the manager started this process, else as it is; returns
/// its exit code.
pub fn as_service_or(main: fn() -> i32) -> i32 {
    if !started_by_the_service_manager() {
        return main();
    }
    let _ = MAIN.set(main);
    // The name is ignored for a service that has its process to itself, as this one does.
    match service_dispatcher::start("mtt", ffi_service_main) {
        Ok(()) => CODE.load(Ordering::SeqCst),
        // No manager to connect to after all (ERROR_FAILED_SERVICE_CONTROLLER_CONNECT).
        Err(_) => main(),
    }
}

/// Whether this process's parent is the service manager (`services.exe`), which starts
/// services and nothing else.
fn started_by_the_service_manager() -> bool {
    let me = std::process::id();
    let processes = processes();
    processes
        .iter()
        .find(|(pid, _, _)| *pid == me)
        .and_then(|(_, parent, _)| processes.iter().find(|(pid, _, _)| pid == parent))
        .is_some_and(|(_, _, name)| name.eq_ignore_ascii_case("services.exe"))
}

/// Every process: (id, parent's id, executable's file name); empty if they cannot be listed.
fn processes() -> Vec<(u32, u32, String)> {
    use std::os::windows::io::{FromRawHandle, OwnedHandle};
    use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
    use windows_sys::Win32::System::Diagnostics::ToolHelp::{
        CreateToolhelp32Snapshot, PROCESSENTRY32W, Process32FirstW, Process32NextW,
        TH32CS_SNAPPROCESS,
    };
    // SAFETY: no pointer arguments; the result is checked before use.
    let snap = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    if snap == INVALID_HANDLE_VALUE || snap.is_null() {
        return Vec::new();
    }
    // SAFETY: `snap` is a valid handle that nothing else owns; the OwnedHandle closes it.
    let snap = unsafe { OwnedHandle::from_raw_handle(snap) };
    let raw = std::os::windows::io::AsRawHandle::as_raw_handle(&snap);
    // SAFETY: PROCESSENTRY32W is plain integers and arrays of them: all zeroes is valid.
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
    let mut out = Vec::new();
    // SAFETY: `raw` is the live snapshot handle; `entry` is live, writable and of the size
    // its dwSize says.
    let mut more = unsafe { Process32FirstW(raw, &mut entry) } != 0;
    while more {
        let len = entry
            .szExeFile
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(entry.szExeFile.len());
        let name = String::from_utf16_lossy(&entry.szExeFile[..len]);
        out.push((entry.th32ProcessID, entry.th32ParentProcessID, name));
        // SAFETY: as for Process32FirstW.
        more = unsafe { Process32NextW(raw, &mut entry) } != 0;
    }
    out
}

fn report(state: ServiceState, code: i32, hint: Duration) {
    let Some(status) = STATUS.get() else {
        return;
    };
    let controls_accepted = match state {
        ServiceState::Running => ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        _ => ServiceControlAccept::empty(),
    };
    let exit_code = match code {
        0 => ServiceExitCode::Win32(0),
        c => ServiceExitCode::ServiceSpecific(c as u32),
    };
    if let Err(e) = status.set_service_status(ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted,
        exit_code,
        checkpoint: 0,
        wait_hint: hint,
        process_id: None,
    }) {
        log::warn!("cannot tell the service manager the service is {state:?}: {e}");
    }
}

fn service_main(_args: Vec<OsString>) {
    let Some(main) = MAIN.get() else {
        return;
    };
    let handler = |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            report(ServiceState::StopPending, 0, STOP_HINT);
            STOP.notify_one();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    match service_control_handler::register("mtt", handler) {
        Ok(status) => {
            let _ = STATUS.set(status);
        }
        Err(_) => {
            CODE.store(1, Ordering::SeqCst);
            return;
        }
    }
    report(ServiceState::Running, 0, Duration::ZERO);
    let code = main();
    CODE.store(code, Ordering::SeqCst);
    report(ServiceState::Stopped, code, Duration::ZERO);
}
