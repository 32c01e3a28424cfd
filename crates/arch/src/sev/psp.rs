//! The PSP driver's SEV interface (`drivers/crypto/ccp/sev-dev.c`): `/dev/sev`, the command
//! path to the firmware ([`crate::sev::firmware`]) and the firmware pages.
//!
//! | kernel | here |
//! |---|---|
//! | `sev_fops` (`/dev/sev`, the misc device) | [`open_dev_sev`], [`is_dev_sev`] |
//! | `sev_do_cmd` / `__sev_do_cmd_locked` | [`SnpHost::sev_do_cmd`] |
//! | `sev_issue_cmd_external_user` | [`SnpHost::sev_issue_cmd_external_user`] |
//! | `sev_platform_init` (SNP part: `__sev_snp_init_locked`) | [`SnpHost::sev_platform_init`] |
//! | `snp_alloc_firmware_page` / `rmp_mark_pages_firmware` | [`SnpHost::snp_alloc_firmware_page`] |
//! | `snp_free_firmware_page` / `snp_reclaim_pages` | [`SnpHost::snp_free_firmware_page`], [`SnpHost::snp_reclaim_pages`] |
//!
//! A firmware error is `-EIO` with the firmware's status in the caller's `psp_ret` (the `error`
//! field KVM copies back to user space), as `__sev_do_cmd_locked` reports it.

use crate::sev::firmware::{SevCmd, SevRet, SnpLaunchFinishData, SnpLaunchUpdateData};
use crate::sev::host::SnpHost;
use gmem_kvm::arch::PgLevel;
use gmem_mm::fdtable::FdTable;
use gmem_mm::file::{alloc_file_pseudo, File, FileOperations, EMPTY_FOPS, O_RDWR};
use gmem_mm::filemap::EMPTY_AOPS;
use gmem_mm::folio::Folio;
use gmem_mm::inode::{InodeInit, EMPTY_IOPS};
use gmem_mm::{Errno, KResult, Machine, Pfn};
use gmem_sync::Arc;

/// `sev_fops`: the `/dev/sev` misc device (its ioctls, the platform commands, are not modelled;
/// KVM only checks that a descriptor it is given is this device).
static SEV_FOPS: FileOperations = FileOperations { name: "sev_fops", ..EMPTY_FOPS };

/// `open("/dev/sev", O_RDWR)` in the process whose descriptor table is `files`.
#[doc(alias = "sev_fops")]
pub fn open_dev_sev(machine: &Arc<Machine>, files: &FdTable) -> KResult<i32> {
    let fd = files.get_unused_fd()?;
    let inode = InodeInit {
        mode: 0o20600,
        size: 0,
        i_private: 0,
        i_op: &EMPTY_IOPS,
        a_ops: &EMPTY_AOPS,
        a_private: None,
        noexec: false,
    };
    files.fd_install(fd, alloc_file_pseudo(machine, "sev", &SEV_FOPS, O_RDWR, inode, None));
    Ok(fd)
}

/// Whether `file` is `/dev/sev` (`filep->f_op == &sev_fops`).
pub fn is_dev_sev(file: &File) -> bool {
    file.has_fops(&SEV_FOPS)
}

/// One firmware command with its data (`sev_do_cmd(cmd, data, ..)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SevCommand {
    /// `SEV_CMD_SNP_DF_FLUSH`.
    DfFlush,
    /// `SEV_CMD_SNP_GCTX_CREATE` with `sev_data_snp_addr.address`.
    GctxCreate(Pfn),
    /// `SEV_CMD_SNP_LAUNCH_START` with the context and the policy.
    LaunchStart {
        /// `gctx_paddr`.
        gctx: Pfn,
        /// `policy`.
        policy: u64,
    },
    /// `SEV_CMD_SNP_ACTIVATE`.
    Activate {
        /// `gctx_paddr`.
        gctx: Pfn,
        /// `asid`.
        asid: u32,
    },
    /// `SEV_CMD_SNP_LAUNCH_UPDATE`.
    LaunchUpdate(SnpLaunchUpdateData),
    /// `SEV_CMD_SNP_LAUNCH_FINISH`.
    LaunchFinish(SnpLaunchFinishData),
    /// `SEV_CMD_SNP_DECOMMISSION` with `sev_data_snp_addr.address`.
    Decommission(Pfn),
    /// `SEV_CMD_SNP_PAGE_RECLAIM` with `sev_data_snp_page_reclaim.paddr`.
    PageReclaim(Pfn),
}

impl SevCommand {
    /// The command id.
    pub fn cmd(&self) -> SevCmd {
        match self {
            SevCommand::DfFlush => SevCmd::SnpDfFlush,
            SevCommand::GctxCreate(_) => SevCmd::SnpGctxCreate,
            SevCommand::LaunchStart { .. } => SevCmd::SnpLaunchStart,
            SevCommand::Activate { .. } => SevCmd::SnpActivate,
            SevCommand::LaunchUpdate(_) => SevCmd::SnpLaunchUpdate,
            SevCommand::LaunchFinish(_) => SevCmd::SnpLaunchFinish,
            SevCommand::Decommission(_) => SevCmd::SnpDecommission,
            SevCommand::PageReclaim(_) => SevCmd::SnpPageReclaim,
        }
    }
}

impl SnpHost {
    /// `sev_do_cmd(cmd, data, psp_ret)`: run one firmware command. A firmware error is EIO with
    /// the status in `psp_ret`; commands other than platform init need the platform initialised
    /// (the firmware answers `INVALID_PLATFORM_STATE` otherwise).
    #[doc(alias = "__sev_do_cmd_locked")]
    pub fn sev_do_cmd(&self, command: &SevCommand, psp_ret: &mut u32) -> KResult<()> {
        let fw = self.firmware();
        let _span = tracing::debug_span!("sev_do_cmd", cmd = command.cmd().name()).entered();
        let result = match command {
            SevCommand::DfFlush => fw.df_flush(),
            SevCommand::GctxCreate(page) => fw.gctx_create(*page),
            SevCommand::LaunchStart { gctx, policy } => fw.launch_start(*gctx, *policy),
            SevCommand::Activate { gctx, asid } => fw.activate(*gctx, *asid),
            SevCommand::LaunchUpdate(data) => fw.launch_update(data),
            SevCommand::LaunchFinish(data) => fw.launch_finish(data),
            SevCommand::Decommission(gctx) => fw.decommission(*gctx),
            SevCommand::PageReclaim(page) => fw.page_reclaim(*page),
        };
        match result {
            Ok(()) => {
                *psp_ret = 0;
                Ok(())
            }
            Err(ret) => {
                tracing::debug!("sev command {:#x} failed ({ret})", command.cmd() as u32);
                *psp_ret = ret.code();
                Err(Errno::EIO)
            }
        }
    }

    /// `sev_issue_cmd_external_user(filep, cmd, data, error)`: a command on behalf of a caller
    /// that holds `/dev/sev` open (EBADF for any other file).
    pub fn sev_issue_cmd_external_user(&self, file: &File, command: &SevCommand, error: &mut u32) -> KResult<()> {
        if !is_dev_sev(file) {
            return Err(Errno::EBADF);
        }
        self.sev_do_cmd(command, error)
    }

    /// `sev_platform_init`: initialise the SNP platform (`SNP_INIT_EX`) unless it is already;
    /// a failure is EIO with the firmware status in `error`.
    #[doc(alias = "__sev_snp_init_locked")]
    pub fn sev_platform_init(&self, error: &mut u32) -> KResult<()> {
        if self.firmware().is_initialized() {
            return Ok(());
        }
        self.firmware().snp_init().map_err(|ret| {
            *error = ret.code();
            Errno::EIO
        })
    }

    /// `snp_alloc_firmware_page`: a zeroed page made firmware-owned in the RMP
    /// (`rmp_mark_pages_firmware`: assigned, ASID 0, immutable). `None` when allocation or the
    /// RMP update fails (the page is freed).
    #[doc(alias = "rmp_mark_pages_firmware")]
    pub fn snp_alloc_firmware_page(&self) -> Option<Pfn> {
        let mem = &self.machine().mem;
        let pfn = mem.alloc(0).ok()?;
        mem.clear(pfn);
        if self.rmp_make_private(pfn, 0, PgLevel::Level4K, 0, true).is_err() {
            Folio::from_pfn(mem, pfn).put();
            return None;
        }
        Some(pfn)
    }

    /// `snp_reclaim_pages(paddr, npages, locked)`: PAGE_RECLAIM then `rmp_make_shared` for each
    /// page; a page where either fails, and every page after it, is leaked.
    pub fn snp_reclaim_pages(&self, pfn: Pfn, npages: u64) -> KResult<()> {
        for i in 0..npages {
            let page = pfn.offset(i);
            let mut error = 0;
            let result = self
                .sev_do_cmd(&SevCommand::PageReclaim(page), &mut error)
                .and_then(|()| self.rmp_make_shared(page, PgLevel::Level4K));
            if let Err(errno) = result {
                // If there was a failure reclaiming the page then it is no longer safe to release
                // it back to the system; leak it instead.
                self.snp_leak_pages(page, npages - i);
                return Err(errno);
            }
        }
        Ok(())
    }

    /// `snp_free_firmware_page`: reclaim the page and free it (leaked instead if the reclaim
    /// fails).
    pub fn snp_free_firmware_page(&self, pfn: Pfn) {
        if self.snp_reclaim_pages(pfn, 1).is_ok() {
            self.clflush_cache_range(pfn, 1);
            Folio::from_pfn(&self.machine().mem, pfn).put();
        }
    }

    /// The status a failed command left, as a name (for messages).
    pub fn sev_ret_name(code: u32) -> String {
        SevRet::ALL
            .into_iter()
            .find(|ret| ret.code() == code)
            .map_or_else(|| format!("{code:#x}"), |ret| ret.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gmem_mm::MachineConfig;

    #[test]
    fn commands_need_dev_sev_and_report_firmware_errors_as_eio() {
        let machine = Machine::new(MachineConfig::tiny(4096));
        let host = SnpHost::init(&machine);
        let files = FdTable::new();
        let sev = open_dev_sev(&machine, &files).unwrap();
        let file = files.fget(sev).unwrap();
        let mut error = 0;
        // Before SNP_INIT_EX the firmware refuses guest commands.
        assert_eq!(host.sev_issue_cmd_external_user(&file, &SevCommand::DfFlush, &mut error), Err(Errno::EIO));
        assert_eq!(error, SevRet::InvalidPlatformState.code());
        host.sev_platform_init(&mut error).unwrap();
        host.sev_issue_cmd_external_user(&file, &SevCommand::DfFlush, &mut error).unwrap();
        let other = alloc_file_pseudo(
            &machine,
            "other",
            &EMPTY_FOPS,
            O_RDWR,
            InodeInit {
                mode: 0,
                size: 0,
                i_private: 0,
                i_op: &EMPTY_IOPS,
                a_ops: &EMPTY_AOPS,
                a_private: None,
                noexec: false,
            },
            None,
        );
        assert_eq!(host.sev_issue_cmd_external_user(&other, &SevCommand::DfFlush, &mut error), Err(Errno::EBADF));
        drop(file);
        drop(other);
        files.close_all();
    }

    #[test]
    fn firmware_pages_round_trip() {
        let machine = Machine::new(MachineConfig::tiny(4096));
        let host = SnpHost::init(&machine);
        let allocated = machine.mem.allocated_pages();
        let page = host.snp_alloc_firmware_page().unwrap();
        let entry = host.rmp().read(page).unwrap();
        assert_eq!(entry.state_name(), "Firmware");
        host.snp_free_firmware_page(page);
        assert!(!host.rmp().read(page).unwrap().assigned);
        assert_eq!(machine.mem.allocated_pages(), allocated);
        assert_eq!(host.nr_leaked_pages(), 0);
        // A failed reclaim leaks the page instead of freeing it.
        let page = host.snp_alloc_firmware_page().unwrap();
        host.firmware().inject(SevCmd::SnpPageReclaim, SevRet::InvalidPageState, 0, 1);
        host.snp_free_firmware_page(page);
        assert_eq!(host.leaked_pages(), vec![page]);
        assert!(machine.mem.is_allocated(page));
    }
}
