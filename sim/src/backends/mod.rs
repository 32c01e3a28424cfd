//! The backends the command line can choose (`--backend sim|kvm`), opened by name.

pub mod dump;
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
        "kvm" => Err("backend `kvm` (the real /dev/kvm) is not implemented yet".into()),
        other => Err(format!("unknown backend `{other}` (known: {})", BACKENDS.join(", "))),
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
        assert!(message("kvm", "v6.14").unwrap().contains("not implemented yet"));
        assert!(message("qemu", "v6.18").unwrap().starts_with("unknown backend `qemu`"));
        assert!(message("sim", "v5.0").unwrap().starts_with("unknown kernel profile `v5.0`"));
    }
}
