//! Moving uAPI structures between the simulated process's memory and the kernel
//! (`copy_from_user` / `copy_to_user` of a whole `struct`), shared by the vendors' ioctls.

use gmem_kvm::arch::Current;
use gmem_mm::KResult;

/// The uAPI structures `copy_from_user` / `copy_to_user` move as raw bytes.
///
/// # Safety
///
/// Implement only for `repr(C)` structures made of integers and integer arrays (kvm-bindings'
/// structures, and this crate's own for what kvm-bindings lacks), for which every bit pattern
/// is a valid value and which have no padding bytes.
pub unsafe trait UapiStruct: Copy + Default + 'static {}

/// `copy_from_user(&value, uaddr, sizeof(value))`.
pub(crate) fn copy_struct_from_user<T: UapiStruct>(current: Current<'_>, uaddr: u64) -> KResult<T> {
    let mut bytes = vec![0u8; std::mem::size_of::<T>()];
    current.copy_from_user(&mut bytes, uaddr)?;
    Ok(from_bytes(&bytes))
}

/// `copy_to_user(uaddr, &value, sizeof(value))`.
pub(crate) fn copy_struct_to_user<T: UapiStruct>(current: Current<'_>, uaddr: u64, value: &T) -> KResult<()> {
    current.copy_to_user(uaddr, as_bytes(value))
}

/// The raw bytes of a uAPI structure (what user space stages in its memory).
pub fn as_bytes<T: UapiStruct>(value: &T) -> &[u8] {
    // SAFETY: `T` is plain old data without padding (UapiStruct) and the slice covers exactly
    // its bytes, borrowed from `value`.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// A uAPI structure from its raw bytes; `bytes` shorter than the structure are zero-extended,
/// longer ones truncated.
pub fn from_bytes<T: UapiStruct>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let len = bytes.len().min(std::mem::size_of::<T>());
    // SAFETY: `T` accepts any bit pattern (UapiStruct); at most size_of::<T>() bytes are copied
    // into it, from a slice that holds at least `len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut value as *mut T).cast::<u8>(), len) };
    value
}
