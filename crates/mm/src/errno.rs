//! Linux error numbers as the model returns them.
//!
//! The kernel returns `-Exxx` from most functions; the model returns `Err(Errno)` with the
//! positive value, exactly as userspace sees it in `errno` after a failed system call. Only the
//! errors that the modelled code paths can produce are named; [`Errno::from_raw`] accepts any
//! value, and [`Errno::name`] prints unknown values as `E<number>`.

use std::fmt;

/// A Linux errno value (positive, as userspace sees it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(i32);

macro_rules! errnos {
    ($($name:ident = $value:expr, $doc:expr;)*) => {
        impl Errno {
            $(
                #[doc = $doc]
                pub const $name: Errno = Errno($value);
            )*

            /// The symbolic name (`"EINVAL"`), or `E<number>` for a value the table lacks.
            pub fn name(self) -> std::borrow::Cow<'static, str> {
                match self.0 {
                    $($value => std::borrow::Cow::Borrowed(stringify!($name)),)*
                    other => std::borrow::Cow::Owned(format!("E{other}")),
                }
            }

            /// Looks a symbolic name up (`"EINVAL"` → `Errno::EINVAL`).
            pub fn from_name(name: &str) -> Option<Errno> {
                match name {
                    $(stringify!($name) => Some(Errno::$name),)*
                    _ => None,
                }
            }
        }
    };
}

errnos! {
    EPERM = 1, "Operation not permitted.";
    ENOENT = 2, "No such file or directory.";
    EINTR = 4, "Interrupted system call (a signal was pending).";
    EIO = 5, "I/O error.";
    ENXIO = 6, "No such device or address.";
    E2BIG = 7, "Argument list too long.";
    EBADF = 9, "Bad file descriptor.";
    EAGAIN = 11, "Try again.";
    ENOMEM = 12, "Out of memory.";
    EACCES = 13, "Permission denied.";
    EFAULT = 14, "Bad address.";
    EBUSY = 16, "Device or resource busy.";
    EEXIST = 17, "File exists.";
    ENODEV = 19, "No such device.";
    EINVAL = 22, "Invalid argument.";
    ENFILE = 23, "File table overflow.";
    EMFILE = 24, "Too many open files.";
    ENOTTY = 25, "Not a typewriter (unknown ioctl).";
    EFBIG = 27, "File too large.";
    ENOSPC = 28, "No space left on device.";
    ESPIPE = 29, "Illegal seek.";
    ERANGE = 34, "Result out of range.";
    ENOSYS = 38, "Function not implemented.";
    EOVERFLOW = 75, "Value too large for defined data type.";
    EOPNOTSUPP = 95, "Operation not supported.";
    EHWPOISON = 133, "Memory page has hardware error.";
}

impl Errno {
    /// Wraps a raw positive errno value.
    pub const fn from_raw(value: i32) -> Errno {
        Errno(value)
    }

    /// The raw positive value.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// The raw positive value, under the name `kvm_ioctls::Error::errno` gives it, so code
    /// written against kvm-ioctls reads a simulator error the same way.
    pub const fn errno(self) -> i32 {
        self.0
    }

    /// The kernel-style negative return value (`-EINVAL`).
    pub const fn to_kernel(self) -> i64 {
        -(self.0 as i64)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::error::Error for Errno {}

/// The result type of every modelled kernel function that can fail.
pub type KResult<T> = Result<T, Errno>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for errno in [Errno::EINVAL, Errno::EBADF, Errno::EHWPOISON, Errno::EOPNOTSUPP] {
            assert_eq!(Errno::from_name(&errno.name()), Some(errno));
        }
        assert_eq!(Errno::from_raw(200).name(), "E200");
        assert_eq!(Errno::EINVAL.to_kernel(), -22);
    }
}
