//! The backends the command line can choose (`--backend sim|kvm`), opened by name.

pub mod dump;
#[cfg(target_os = "linux")]
pub mod kvm;
pub mod sim;

use crate::backend::Backend;
use crate::script::HeaderError;
use gmem_kvm::KernelProfile;

/// The backend names `--backend` accepts.
pub const BACKENDS: &[&str] = &["sim", "kvm"];

/// The kernel profiles `--kernel` accepts.
pub const KERNELS: &[&str] = &["v6.14", "v6.18", "v6.18-pvm"];

/// The profile used when `--kernel` is not given.
pub const DEFAULT_KERNEL: &str = "v6.18";

/// The simulated host's CPU vendor (`--host`, a script's `# host:` line), which decides the KVM
/// vendor module it loads: AMD's with SEV-SNP (the default), or Intel's with TDX.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Host {
    /// `amd`: `kvm_amd` with SEV-SNP ([`gmem_uapi::SimHost::new`]); `KVM_CAP_VM_TYPES` is 0x1f
    /// on v6.18.
    #[default]
    Amd,
    /// `intel`: `kvm_intel` with the TDX module ([`gmem_uapi::SimHost::new_intel`]);
    /// `KVM_CAP_VM_TYPES` is 0x23 on v6.18.
    Intel,
}

/// The host names `--host` and `# host:` accept.
pub const HOSTS: &[&str] = &["amd", "intel"];

impl Host {
    /// The host called `name` (`amd`, `intel`).
    pub fn by_name(name: &str) -> Result<Host, String> {
        match name {
            "amd" => Ok(Host::Amd),
            "intel" => Ok(Host::Intel),
            other => Err(format!("unknown host `{other}` (known: {})", HOSTS.join(", "))),
        }
    }

    /// The host's name as `--host` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Host::Amd => "amd",
            Host::Intel => "intel",
        }
    }
}

/// The host a script's header declares (its `# host:` line), `None` without one. The error
/// names the line (`line 2: unknown host ...`).
pub fn declared_host(source: &str) -> Result<Option<Host>, HeaderError> {
    let Some(line) = crate::script::header(source)?.host else { return Ok(None) };
    Host::by_name(&line.value).map(Some).map_err(|message| HeaderError { line: line.number, message })
}

/// The host a script runs on: the one `--host` names, or its header's, or the default. A header
/// and a flag that disagree are an error (the script was written for another host).
pub fn choose_host(declared: Option<Host>, flag: Option<Host>) -> Result<Host, String> {
    match (declared, flag) {
        (Some(declared), Some(flag)) if declared != flag => {
            Err(format!("the script declares `# host: {}` but --host {} was given", declared.name(), flag.name()))
        }
        (declared, flag) => Ok(flag.or(declared).unwrap_or_default()),
    }
}

/// Opens a fresh backend `backend` (`sim` or `kvm`) under kernel profile `kernel`, on the
/// default (AMD) host: [`open_on`] with [`Host::Amd`].
pub fn open(backend: &str, kernel: &str) -> Result<Box<dyn Backend>, String> {
    open_on(backend, kernel, Host::Amd)
}

/// Opens a fresh backend `backend` (`sim` or `kvm`) under kernel profile `kernel` on `host`.
///
/// Called once per script file; the error text is printed as is.
///
/// `kernel` is a built-in profile name, optionally with fix toggles (`v6.14+F1`). On `kvm` the
/// host is this machine, whatever `host` says (as the kernel is, whatever `kernel` says).
pub fn open_on(backend: &str, kernel: &str, host: Host) -> Result<Box<dyn Backend>, String> {
    let profile = KernelProfile::by_name(kernel)?;
    match backend {
        "sim" => Ok(Box::new(sim::SimBackend::on(host, profile))),
        "kvm" => open_kvm(&profile),
        other => Err(format!("unknown backend `{other}` (known: {})", BACKENDS.join(", "))),
    }
}

/// The real kernel. It has no profile or host of its own: it is the kernel and the machine it
/// runs on. A profile other than the one modelling this machine's kernel, and either host, are
/// accepted (their names are still validated), so the same command line can name both arms of
/// a comparison.
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

    #[test]
    fn the_host_decides_the_vm_types() {
        let vm_types = |host: Host| {
            let mut backend = open_on("sim", "v6.18", host).unwrap();
            backend.check_extension(None, 235).unwrap()
        };
        assert_eq!(vm_types(Host::Amd), 0x1f, "DEFAULT, SW_PROTECTED, SEV, SEV_ES, SEV_SNP");
        assert_eq!(vm_types(Host::Intel), 0x23, "DEFAULT, SW_PROTECTED, TDX");
        let mut default = open("sim", "v6.18").unwrap();
        assert_eq!(default.check_extension(None, 235).unwrap(), 0x1f, "AMD is the default");
    }

    #[test]
    fn headers_and_flags_choose_the_host() {
        assert_eq!(Host::by_name("intel"), Ok(Host::Intel));
        assert!(Host::by_name("arm").unwrap_err().contains("unknown host `arm` (known: amd, intel)"));
        let intel = "# profile: v6.18\n# host: intel\n# what it shows\n\nvm = create_vm\n";
        assert_eq!(declared_host(intel), Ok(Some(Host::Intel)));
        assert_eq!(declared_host("# profile: v6.18\nvm = create_vm\n"), Ok(None));
        assert!(declared_host("# host: sparc\n").unwrap_err().to_string().starts_with("line 1: unknown host `sparc`"));
        assert_eq!(choose_host(None, None), Ok(Host::Amd));
        assert_eq!(choose_host(Some(Host::Intel), None), Ok(Host::Intel));
        assert_eq!(choose_host(None, Some(Host::Intel)), Ok(Host::Intel));
        assert_eq!(choose_host(Some(Host::Intel), Some(Host::Intel)), Ok(Host::Intel));
        let conflict = choose_host(Some(Host::Intel), Some(Host::Amd)).unwrap_err();
        assert_eq!(conflict, "the script declares `# host: intel` but --host amd was given");
    }
}
