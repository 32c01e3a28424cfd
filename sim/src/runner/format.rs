//! The result text of a line, exactly as the spec's "Results" section prints it.

use std::fmt::Write as _;

use super::exec::{Outcome, Success};
use crate::backend::{Failure, GhcbAnswer, Stat, Violation};

/// A line's result: the text after `LINE: `, and the detail lines printed under it
/// (without their two-space indent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Formatted {
    pub result: String,
    pub details: Vec<String>,
}

impl Formatted {
    fn line(result: String) -> Formatted {
        Formatted { result, details: Vec::new() }
    }
}

/// Formats an outcome.
pub(crate) fn format_outcome(outcome: &Outcome) -> Formatted {
    match outcome {
        Ok(success) => format_success(success),
        Err(failure) => Formatted::line(format_failure(failure)),
    }
}

fn format_success(success: &Success) -> Formatted {
    match success {
        Success::Unit | Success::Handle(_) => Formatted::line("ok".into()),
        Success::Count(value) => Formatted::line(format!("ok {value}")),
        Success::Signed(value) => Formatted::line(format!("ok {value}")),
        Success::Bytes(bytes) if bytes.is_empty() => Formatted::line("ok".into()),
        Success::Bytes(bytes) => Formatted::line(format!("ok {}", hex(bytes))),
        Success::Stat(stat) => Formatted::line(format_stat(stat)),
        Success::Dump(lines) => Formatted { result: "ok".into(), details: lines.clone() },
        Success::Invariants(violations) => format_violations(violations),
        Success::Record(fields) => {
            let mut text = "ok".to_string();
            for (key, value) in fields {
                let _ = write!(text, " {key}={value}");
            }
            Formatted::line(text)
        }
        Success::Ghcb(GhcbAnswer::Status(status)) => Formatted::line(format!("ok status={status:#x}")),
        Success::Ghcb(GhcbAnswer::Msr(msr)) => Formatted::line(format!("ok msr={msr:#x}")),
        Success::Ghcb(GhcbAnswer::Ignored) => Formatted::line("ok ignored".into()),
        Success::TdxStatus(status) => Formatted::line(format!("ok {}", tdx_status_name(*status))),
        Success::Tdvmcall(answer) => {
            Formatted::line(format!("ok status={} r11={:#x}", tdvmcall_status_name(answer.r10), answer.r11))
        }
    }
}

/// A TDVMCALL status (R10) by its name without `TDVMCALL_STATUS_` (`SUCCESS`, `RETRY`,
/// `INVALID_OPERAND`, `ALIGN_ERROR`, `SUBFUNC_UNSUPPORTED`), or in hexadecimal.
pub(crate) fn tdvmcall_status_name(r10: u64) -> String {
    use gmem_arch::tdx::run::{
        TDVMCALL_STATUS_ALIGN_ERROR, TDVMCALL_STATUS_INVALID_OPERAND, TDVMCALL_STATUS_RETRY,
        TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, TDVMCALL_STATUS_SUCCESS,
    };
    let name = match r10 {
        TDVMCALL_STATUS_SUCCESS => "SUCCESS",
        TDVMCALL_STATUS_RETRY => "RETRY",
        TDVMCALL_STATUS_INVALID_OPERAND => "INVALID_OPERAND",
        TDVMCALL_STATUS_ALIGN_ERROR => "ALIGN_ERROR",
        TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED => "SUBFUNC_UNSUPPORTED",
        other => return format!("{other:#x}"),
    };
    name.to_string()
}

fn format_stat(stat: &Stat) -> String {
    let Stat { size, blksize, blocks, mode } = stat;
    format!("ok size={size} blksize={blksize} blocks={blocks} mode=0o{mode:06o}")
}

/// `ok`, or `VIOLATION` with the distinct names sorted and every violation's details.
fn format_violations(violations: &[Violation]) -> Formatted {
    if violations.is_empty() {
        return Formatted::line("ok".into());
    }
    let mut sorted: Vec<&Violation> = violations.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut names: Vec<&str> = sorted.iter().map(|v| v.name.as_str()).collect();
    names.dedup();
    Formatted {
        result: format!("VIOLATION {}", names.join(" ")),
        details: sorted.iter().flat_map(|v| v.details.iter().cloned()).collect(),
    }
}

fn format_failure(failure: &Failure) -> String {
    match failure {
        Failure::Errno(errno) => errno.name().into_owned(),
        Failure::Signal(signal) => signal.name().to_string(),
        Failure::Exit(exit) => {
            let mut text = format!("exit {}", exit.reason);
            for (key, value) in &exit.fields {
                let _ = write!(text, " {key}={value}");
            }
            text
        }
        Failure::GuestException { vector, fields } => {
            let mut text = format!("guest {vector}");
            for (key, value) in fields {
                let _ = write!(text, " {key}={value}");
            }
            text
        }
        Failure::Sev { errno, fw_error: 0 } => errno.name().into_owned(),
        Failure::Sev { errno, fw_error } => {
            format!("{} fw_error={}", errno.name(), gmem_arch::sev::kvm::fw_error_name(*fw_error))
        }
        Failure::Tdx { errno, hw_error, fields } => {
            let mut text = errno.name().into_owned();
            if *hw_error != 0 {
                let _ = write!(text, " hw_error={}", tdx_status_name(*hw_error));
            }
            for (key, value) in fields {
                let _ = write!(text, " {key}={value}");
            }
            text
        }
        Failure::Skip(reason) if reason.is_empty() => "skip".to_string(),
        Failure::Skip(reason) => format!("skip {reason}"),
    }
}

/// A TDX module status (a SEAMCALL's, a TDCALL's) as `inject tdx status=` names it: the
/// module's class without `TDX_`, then `|OPERAND` unless the operand id is 0 (`SUCCESS`,
/// `OPERAND_BUSY|SEPT`, `EPT_WALK_FAILED|0x5`); a class the model does not name prints as the
/// whole value in hexadecimal.
pub(crate) fn tdx_status_name(raw: u64) -> String {
    let status = gmem_arch::tdx::status::TdxStatus(raw);
    let class = status.name();
    if class == "UNKNOWN" {
        return format!("{raw:#x}");
    }
    match (status.operand(), status.operand_name()) {
        (0, _) => class.to_string(),
        (_, Some(operand)) => format!("{class}|{operand}"),
        (operand, None) => format!("{class}|{operand:#x}"),
    }
}

/// Lowercase hexadecimal, two digits per byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// `text` with runs of white space collapsed to one space and the ends trimmed, as
/// expectations are compared.
pub(crate) fn collapse_spaces(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_modes_print_six_octal_digits() {
        let stat = Stat { size: 0, blksize: 4096, blocks: 0, mode: 0o600 };
        assert_eq!(format_stat(&stat), "ok size=0 blksize=4096 blocks=0 mode=0o000600");
        let stat = Stat { size: -1, blksize: 1, blocks: 2, mode: 0o1100600 };
        assert_eq!(format_stat(&stat), "ok size=-1 blksize=1 blocks=2 mode=0o1100600");
    }

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0a, 0xff]), "000aff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn expectations_compare_with_white_space_collapsed() {
        assert_eq!(collapse_spaces("  ok \t size=1   blocks=0 "), "ok size=1 blocks=0");
        assert_ne!(collapse_spaces("ok 3"), collapse_spaces("ok3"));
    }

    #[test]
    fn firmware_statuses_print_by_name_after_the_errno() {
        let sev = |fw_error| format_failure(&Failure::Sev { errno: gmem_mm::Errno::EIO, fw_error });
        assert_eq!(sev(0), "EIO");
        assert_eq!(sev(0x16), "EIO fw_error=INVALID_PARAM");
        assert_eq!(sev(0x02), "EIO fw_error=INVALID_GUEST_STATE");
        assert_eq!(sev(0x99), "EIO fw_error=0x99");
    }

    #[test]
    fn seamcall_statuses_print_by_name_after_the_errno() {
        let tdx = |hw_error| format_failure(&Failure::tdx(gmem_mm::Errno::EBUSY, hw_error));
        assert_eq!(tdx(0), "EBUSY");
        assert_eq!(tdx(0x8000_0200_0000_0092), "EBUSY hw_error=OPERAND_BUSY|SEPT");
        assert_eq!(tdx(0x8000_0200_0000_0000), "EBUSY hw_error=OPERAND_BUSY");
        assert_eq!(tdx(0xC000_0B00_0000_0005), "EBUSY hw_error=EPT_WALK_FAILED|0x5");
        assert_eq!(tdx(0xC000_0999_0000_0001), "EBUSY hw_error=0xc000099900000001");
        // Each name parses back to the same status (`inject tdx status=`).
        for raw in [0x8000_0200_0000_0092, 0x8000_0200_0000_0000, 0xC000_0B00_0000_0005, 0xC000_0999_0000_0001] {
            let name = tdx_status_name(raw);
            assert_eq!(crate::script::value::parse_tdx_status(&name), Ok(raw), "{name}");
        }
        let region = Failure::Tdx {
            errno: gmem_mm::Errno::EINVAL,
            hw_error: 0,
            fields: vec![("gpa".into(), "0x1000".into()), ("nr_pages".into(), "1".into())],
        };
        assert_eq!(format_failure(&region), "EINVAL gpa=0x1000 nr_pages=1");
    }

    #[test]
    fn ghcb_answers_and_records() {
        let line = |success: Success| format_success(&success).result;
        assert_eq!(line(Success::Ghcb(GhcbAnswer::Status(0))), "ok status=0x0");
        assert_eq!(line(Success::Ghcb(GhcbAnswer::Status(1 << 40))), "ok status=0x10000000000");
        assert_eq!(line(Success::Ghcb(GhcbAnswer::Msr(0x7015))), "ok msr=0x7015");
        assert_eq!(line(Success::Ghcb(GhcbAnswer::Ignored)), "ok ignored");
        let record =
            Success::Record(vec![("gfn_start", "2".into()), ("len", "0".into()), ("uaddr", "m+0x2000".into())]);
        assert_eq!(line(record), "ok gfn_start=2 len=0 uaddr=m+0x2000");
    }

    #[test]
    fn tdcall_answers_print_statuses_by_name() {
        let line = |success: Success| format_success(&success).result;
        assert_eq!(line(Success::TdxStatus(0)), "ok SUCCESS");
        assert_eq!(line(Success::TdxStatus(0x0000_0B0A_0000_0000)), "ok PAGE_ALREADY_ACCEPTED");
        assert_eq!(line(Success::TdxStatus(0xC000_0100_0000_0001)), "ok OPERAND_INVALID|RCX");
        let vmcall = |r10, r11| line(Success::Tdvmcall(crate::backend::TdvmcallAnswer { r10, r11 }));
        assert_eq!(vmcall(0, 0x10001), "ok status=SUCCESS r11=0x10001");
        assert_eq!(vmcall(1, 0x8000_0030_0000), "ok status=RETRY r11=0x800000300000");
        assert_eq!(vmcall(0x8000_0000_0000_0000, 0x1000), "ok status=INVALID_OPERAND r11=0x1000");
        assert_eq!(vmcall(0x8000_0000_0000_0002, 0x1800), "ok status=ALIGN_ERROR r11=0x1800");
        assert_eq!(vmcall(0x8000_0000_0000_0003, 0), "ok status=SUBFUNC_UNSUPPORTED r11=0x0");
        assert_eq!(vmcall(0x8000_0000_0000_0001, 0), "ok status=0x8000000000000001 r11=0x0");
    }

    #[test]
    fn a_skip_without_reason_prints_skip_alone() {
        assert_eq!(format_failure(&Failure::Skip(String::new())), "skip");
        assert_eq!(format_failure(&Failure::Skip("kvm".into())), "skip kvm");
    }
}
