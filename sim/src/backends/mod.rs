//! The backends the command line can choose (`--backend sim|kvm`), opened by name.

pub mod dump;
#[cfg(target_os = "linux")]
pub mod kvm;
pub mod sim;

use crate::backend::Backend;
use gmem_kvm::KernelProfile;

/// The backend names `--backend` accepts.
pub const BACKENDS: &[&str] = &["sim", "kvm"];

/// The kernel profiles `--kernel` accepts.
pub const KERNELS: &[&str] = &["v6.14", "v6.18", "v6.18-pvm"];

/// The profile used when `--kernel` is not given.
pub const DEFAULT_KERNEL: &str = "v6.18";

/// Opens a fresh backend `backend` (`sim` or `kvm`) under kernel profile `kernel`.
///
/// Called once per script file; the error text is printed as is.
///
/// `kernel` is a built-in profile name, optionally with fix toggles (`v6.14+F1`).
pub fn open(backend: &str, kernel: &str) -> Result<Box<dyn Backend>, String> {
    let profile = KernelProfile::by_name(kernel)?;
    match backend {
        "sim" => Ok(Box::new(sim::SimBackend::new(profile))),
        "kvm" => open_kvm(&profile),
        other => Err(format!("unknown backend `{other}` (known: {})", BACKENDS.join(", "))),
    }
}

/// The real kernel. It has no profile of its own: it is the kernel it runs on. A profile other
/// than the one modelling this machine's kernel is accepted (its name is still validated), so
/// the same command line can name both arms of a comparison.
#[cfg(target_os = "linux")]
fn open_kvm(_profile: &KernelProfile) -> Result<Box<dyn Backend>, String> {
    Ok(Box::new(kvm::KvmBackend::open()?))
}

#[cfg(not(target_os = "linux"))]
fn open_kvm(_profile: &KernelProfile) -> Result<Box<dyn Backend>, String> {
    Err("backend `kvm` needs Linux and /dev/kvm".into())
}

/// Whether the kvm backend can open here: `Ok`, or the reason it cannot.
pub fn kvm_available() -> Result<(), String> {
    open_kvm(&KernelProfile::default()).map(drop)
}

/// For test suites: whether a test that needs `/dev/kvm` should run.
///
/// Where the kvm backend cannot open, prints `skipping TEST: REASON` and returns `false`, unless
/// `GMEM_REQUIRE_KVM=1` is set, in which case the absence is a failure (panics).
pub fn kvm_or_skip(test: &str) -> bool {
    match kvm_available() {
        Ok(()) => true,
        Err(reason) if std::env::var("GMEM_REQUIRE_KVM").is_ok_and(|v| v == "1") => {
            panic!("{test}: GMEM_REQUIRE_KVM=1 but the kvm backend is unavailable: {reason}")
        }
        Err(reason) => {
            eprintln!("skipping {test}: {reason}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_errors_and_sim_opens() {
        let message = |backend: &str, kernel: &str| open(backend, kernel).err();
        assert!(open("sim", "v6.18").is_ok());
        assert!(open("sim", "v6.14+F1").is_ok());
        if std::path::Path::new("/dev/kvm").exists() {
            assert!(open("kvm", "v6.18-pvm").is_ok());
        } else {
            assert!(message("kvm", "v6.18-pvm").unwrap().contains("/dev/kvm"));
        }
        assert!(message("qemu", "v6.18").unwrap().starts_with("unknown backend `qemu`"));
        assert!(message("sim", "v5.0").unwrap().starts_with("unknown kernel profile `v5.0`"));
    }
}
