//! The SEV-SNP launch digest: the hash chain the SNP firmware extends at every
//! SNP_LAUNCH_UPDATE (`arch-and-mmu.md` §1.5), reported as MEASUREMENT in attestation reports.
//!
//! The digest `LD` of a guest context starts as 48 zero bytes. Each LAUNCH_UPDATE of one 4K page
//! sets `LD = SHA-384(PAGE_INFO)`, PAGE_INFO being 0x70 bytes, little-endian (SEV-SNP firmware
//! ABI, "Layout of the PAGE_INFO structure"):
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 48 | the previous `LD` |
//! | 48 | 48 | CONTENTS: SHA-384 of the 4K page for NORMAL and VMSA pages; 48 zero bytes for ZERO, UNMEASURED, SECRETS and CPUID pages |
//! | 96 | 2 | length, 0x70 |
//! | 98 | 1 | page type ([`SnpPageType`]) |
//! | 99 | 1 | IMI page flag, 0 |
//! | 100 | 1 | VMPL3 permissions, 0 |
//! | 101 | 1 | VMPL2 permissions, 0 |
//! | 102 | 1 | VMPL1 permissions, 0 |
//! | 103 | 1 | reserved, 0 |
//! | 104 | 8 | the page's GPA ([`VMSA_GPA`] for VMSA pages) |
//!
//! Order matters: the digest is a chain, so the same pages launched in another order give
//! another digest. The page types' side effects (the firmware zeroes ZERO pages, fills the
//! SECRETS page, checks the CPUID page) belong to the firmware model (`firmware.rs`); this
//! module only computes the digest.
//!
//! # Source
//!
//! The layout follows sev-snp-measure's `sevsnpmeasure/gctx.py` (virtee/sev-snp-measure, checked
//! against the PyPI release 0.0.13), which tools use to predict a guest's MEASUREMENT. Its
//! `GCTX._update` hashes with SHA-384 the PAGE_INFO it builds as
//!
//! ```text
//! ld + contents + le16(0x70) + le8(page_type) + le8(is_imi)
//!    + le8(vmpl3_perms) + le8(vmpl2_perms) + le8(vmpl1_perms) + le8(0) + le64(gpa)
//! ```
//!
//! with `is_imi` and the three permissions 0. Every field, offset and page-type number of the
//! reference notes (§1.5) agrees with that source. Details the notes do not spell out, all from
//! the source:
//!
//! * the VMSA GPA is the constant `0xFFFFFFFFF000` (gctx.py's `GCTX.VMSA_GPA`, also the kernel's
//!   `INITIAL_VMSA_GPA`): bits 12–47 set. gctx.py's comment describes it as `(u64)-1`
//!   page-aligned "with all the bits above 51 cleared", which would be `0x000F_FFFF_FFFF_F000`;
//!   the constant, not the comment, is what is hashed, and [`VMSA_GPA`] is the constant;
//! * UNMEASURED pages are measured like ZERO pages (zero CONTENTS, but type and GPA hashed):
//!   `update_unmeasured_pages(gpa, length_bytes)` in 0.0.13 (an older upstream gctx.py has
//!   `update_unmeasured_page(gpa)`, one page, instead);
//! * the Python class is `GCTX` (`from sevsnpmeasure.gctx import GCTX`); in 0.0.13 its
//!   constructor takes an optional seed (the initial `LD`, 48 zero bytes by default), which the
//!   older gctx.py does not.
//!
//! [`LaunchDigest::extend`] hashes the GPA it is given: the firmware takes it from the page's
//! RMP entry, which for a VMSA KVM assigns at [`VMSA_GPA`] (gctx.py's `update_vmsa_page`
//! hard-codes it).

use sha2::{Digest, Sha384};
use std::fmt;

/// SNP page types (the firmware ABI's PAGE_TYPE_*), as KVM's uAPI numbers them
/// (KVM_SEV_SNP_PAGE_TYPE_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SnpPageType {
    /// 1: a page of guest data, measured (its SHA-384 is hashed into the digest).
    Normal = 1,
    /// 2: a vCPU's initial VMSA (save area), measured, at [`VMSA_GPA`].
    Vmsa = 2,
    /// 3: a page the firmware zeroes; contents not measured.
    Zero = 3,
    /// 4: a page whose contents are not measured (type and GPA are).
    Unmeasured = 4,
    /// 5: the secrets page, filled by the firmware; contents not measured.
    Secrets = 5,
    /// 6: the CPUID table, checked by the firmware; contents not measured.
    Cpuid = 6,
}

impl SnpPageType {
    /// Every page type, in the order of their numbers.
    pub const ALL: [SnpPageType; 6] = [
        SnpPageType::Normal,
        SnpPageType::Vmsa,
        SnpPageType::Zero,
        SnpPageType::Unmeasured,
        SnpPageType::Secrets,
        SnpPageType::Cpuid,
    ];

    /// The page type numbered `raw` (1–6), or `None` for any other number.
    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(SnpPageType::Normal),
            2 => Some(SnpPageType::Vmsa),
            3 => Some(SnpPageType::Zero),
            4 => Some(SnpPageType::Unmeasured),
            5 => Some(SnpPageType::Secrets),
            6 => Some(SnpPageType::Cpuid),
            _ => None,
        }
    }

    /// The type's name without the `PAGE_TYPE_` prefix: `"NORMAL"`, `"VMSA"`, `"ZERO"`,
    /// `"UNMEASURED"`, `"SECRETS"` or `"CPUID"`.
    pub fn name(self) -> &'static str {
        match self {
            SnpPageType::Normal => "NORMAL",
            SnpPageType::Vmsa => "VMSA",
            SnpPageType::Zero => "ZERO",
            SnpPageType::Unmeasured => "UNMEASURED",
            SnpPageType::Secrets => "SECRETS",
            SnpPageType::Cpuid => "CPUID",
        }
    }

    /// The page type [`name`](Self::name) returns `name` for (exact, upper case), or `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        SnpPageType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether the page's contents are hashed into the digest (NORMAL and VMSA pages); the
    /// other types contribute 48 zero bytes as CONTENTS.
    pub fn is_measured(self) -> bool {
        matches!(self, SnpPageType::Normal | SnpPageType::Vmsa)
    }
}

impl fmt::Display for SnpPageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The VMSA pages' GPA in PAGE_INFO (gctx.py's `GCTX.VMSA_GPA`, the kernel's `INITIAL_VMSA_GPA`).
pub const VMSA_GPA: u64 = 0x0000_FFFF_FFFF_F000;

/// The size of a launch digest: one SHA-384 hash.
pub const LD_SIZE: usize = 48;

/// The size of PAGE_INFO, also stored in its length field.
pub const PAGE_INFO_SIZE: usize = 0x70;

/// The size of the page one LAUNCH_UPDATE measures.
const PAGE_BYTES: usize = 4096;

/// The launch digest of one guest context.
#[derive(Clone, PartialEq, Eq)]
pub struct LaunchDigest([u8; LD_SIZE]);

impl LaunchDigest {
    /// The digest of a context no page has been launched into: 48 zero bytes.
    pub fn new() -> Self {
        LaunchDigest([0; LD_SIZE])
    }

    /// The PAGE_INFO the next LAUNCH_UPDATE of a page of type `page_type` at `gpa` with
    /// `contents` hashes (see the module docs for the layout). `contents` is hashed only for
    /// [`SnpPageType::Normal`] and [`SnpPageType::Vmsa`] pages; for the other types CONTENTS is
    /// 48 zero bytes, whatever `contents` holds.
    pub fn page_info(&self, page_type: SnpPageType, gpa: u64, contents: &[u8; PAGE_BYTES]) -> [u8; PAGE_INFO_SIZE] {
        self.page_info_hashed(page_type, gpa, &LaunchDigest::contents_hash(page_type, contents))
    }

    /// The CONTENTS field of PAGE_INFO for a page of type `page_type` holding `contents`: the
    /// SHA-384 of the page for [`SnpPageType::Normal`] and [`SnpPageType::Vmsa`] pages, 48 zero
    /// bytes for the other types.
    pub fn contents_hash(page_type: SnpPageType, contents: &[u8; PAGE_BYTES]) -> [u8; LD_SIZE] {
        let mut hash = [0u8; LD_SIZE];
        if page_type.is_measured() {
            hash.copy_from_slice(&Sha384::digest(contents));
        }
        hash
    }

    /// PAGE_INFO with its CONTENTS field given (as [`contents_hash`](Self::contents_hash)
    /// computes it).
    pub fn page_info_hashed(
        &self,
        page_type: SnpPageType,
        gpa: u64,
        contents_hash: &[u8; LD_SIZE],
    ) -> [u8; PAGE_INFO_SIZE] {
        let mut info = [0u8; PAGE_INFO_SIZE];
        info[0..48].copy_from_slice(&self.0);
        info[48..96].copy_from_slice(contents_hash);
        info[96..98].copy_from_slice(&(PAGE_INFO_SIZE as u16).to_le_bytes());
        info[98] = page_type as u8;
        // 99: IMI page flag; 100, 101, 102: VMPL3, VMPL2, VMPL1 permissions; 103: reserved.
        info[104..112].copy_from_slice(&gpa.to_le_bytes());
        info
    }

    /// One LAUNCH_UPDATE of one 4K page: `LD = SHA-384(PAGE_INFO)`, PAGE_INFO as
    /// [`page_info`](Self::page_info) builds it.
    pub fn extend(&mut self, page_type: SnpPageType, gpa: u64, contents: &[u8; PAGE_BYTES]) {
        self.extend_hashed(page_type, gpa, &LaunchDigest::contents_hash(page_type, contents));
    }

    /// [`extend`](Self::extend) with the CONTENTS field given instead of the page (replaying a
    /// log of what the firmware measured).
    pub fn extend_hashed(&mut self, page_type: SnpPageType, gpa: u64, contents_hash: &[u8; LD_SIZE]) {
        let info = self.page_info_hashed(page_type, gpa, contents_hash);
        self.0.copy_from_slice(&Sha384::digest(info));
    }

    /// The 48 bytes of the digest (the MEASUREMENT of an attestation report).
    pub fn as_bytes(&self) -> &[u8; LD_SIZE] {
        &self.0
    }

    /// The digest as 96 lower-case hex digits (as gctx.py's `hex_ld()` prints it).
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(2 * LD_SIZE);
        for byte in self.0 {
            hex.push(DIGITS[usize::from(byte >> 4)] as char);
            hex.push(DIGITS[usize::from(byte & 0xf)] as char);
        }
        hex
    }
}

impl Default for LaunchDigest {
    /// The same as [`LaunchDigest::new`]: 48 zero bytes.
    fn default() -> Self {
        LaunchDigest::new()
    }
}

impl fmt::Debug for LaunchDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LaunchDigest({})", self.to_hex())
    }
}

impl fmt::Display for LaunchDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The expected digests below come from the real sev-snp-measure (PyPI 0.0.13):
    //   pip install sev-snp-measure
    //   python3 -c 'from sevsnpmeasure.gctx import GCTX; g = GCTX(); ...; print(g.hex_ld())'
    // NORMAL_PAGE is `bytes(i % 256 for i in range(4096))` and VMSA_PAGE `b"\x5a" * 4096`.

    /// `bytes(i % 256 for i in range(4096))`.
    fn normal_page() -> [u8; 4096] {
        std::array::from_fn(|i| (i % 256) as u8)
    }

    /// `b"\x5a" * 4096`.
    fn vmsa_page() -> [u8; 4096] {
        [0x5a; 4096]
    }

    const ZERO_PAGE: [u8; 4096] = [0; 4096];

    #[test]
    fn empty_digest_is_48_zero_bytes() {
        // GCTX().hex_ld()
        const EXPECTED: &str =
            "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";
        let ld = LaunchDigest::new();
        assert_eq!(ld.as_bytes(), &[0u8; 48]);
        assert_eq!(ld.to_hex(), EXPECTED);
        assert_eq!(LaunchDigest::default(), ld);
    }

    #[test]
    fn one_normal_page_matches_sev_snp_measure() {
        // g = GCTX(); g.update_normal_pages(0x1000, bytes(i % 256 for i in range(4096)))
        // print(g.hex_ld())
        const EXPECTED: &str =
            "d9ee416942ec5db1caf25b01cff7feaed0d7ac42422f811c6164e4857e3f800d270202f572ade105c96b3959107b8521";
        let mut ld = LaunchDigest::new();
        ld.extend(SnpPageType::Normal, 0x1000, &normal_page());
        assert_eq!(ld.to_hex(), EXPECTED);
    }

    #[test]
    fn launch_sequence_matches_sev_snp_measure() {
        // g = GCTX()
        // g.update_normal_pages(0x1000, bytes(i % 256 for i in range(4096)))
        // g.update_zero_pages(0x2000, 4096)
        // g.update_secrets_page(0x3000)
        // g.update_cpuid_page(0x4000)
        // g.update_unmeasured_pages(0x5000, 4096)   # update_unmeasured_page(0x5000) before 0.0.13
        // g.update_vmsa_page(b"\x5a" * 4096)
        // print(g.hex_ld())
        const EXPECTED: &str =
            "4d8511c9e5834d8d5e059102ca6802b5e0f37b9561868d956e27cd8bd815b31e730f7e0cb2915d8bd908535141bbea4b";
        // The non-measured pages are given non-zero contents: they must not be hashed.
        let junk = [0xa5u8; 4096];
        let mut ld = LaunchDigest::new();
        ld.extend(SnpPageType::Normal, 0x1000, &normal_page());
        ld.extend(SnpPageType::Zero, 0x2000, &junk);
        ld.extend(SnpPageType::Secrets, 0x3000, &junk);
        ld.extend(SnpPageType::Cpuid, 0x4000, &junk);
        ld.extend(SnpPageType::Unmeasured, 0x5000, &junk);
        ld.extend(SnpPageType::Vmsa, VMSA_GPA, &vmsa_page());
        assert_eq!(ld.to_hex(), EXPECTED);
    }

    #[test]
    fn order_matters() {
        // g = GCTX(); g.update_zero_pages(0x2000, 4096); g.update_secrets_page(0x3000); print(g.hex_ld())
        const ZERO_THEN_SECRETS: &str =
            "3d32b7689bf6248f847e03090f5bbec3818da6ab88ddfd2ff561964f05eb088a475f2638cdb7608748114ea7ef718c65";
        // g = GCTX(); g.update_secrets_page(0x3000); g.update_zero_pages(0x2000, 4096); print(g.hex_ld())
        const SECRETS_THEN_ZERO: &str =
            "f0d224e992bdb4eae68774a89d3721f32f8fc14db5c8ff4f814fb6bb2e302b6c4059ea288b5f614234a5c167b54966a3";
        let mut a = LaunchDigest::new();
        a.extend(SnpPageType::Zero, 0x2000, &ZERO_PAGE);
        a.extend(SnpPageType::Secrets, 0x3000, &ZERO_PAGE);
        let mut b = LaunchDigest::new();
        b.extend(SnpPageType::Secrets, 0x3000, &ZERO_PAGE);
        b.extend(SnpPageType::Zero, 0x2000, &ZERO_PAGE);
        assert_eq!(a.to_hex(), ZERO_THEN_SECRETS);
        assert_eq!(b.to_hex(), SECRETS_THEN_ZERO);
        assert_ne!(a, b);

        // Two measured pages swapped as well.
        let mut c = LaunchDigest::new();
        c.extend(SnpPageType::Normal, 0x1000, &normal_page());
        c.extend(SnpPageType::Vmsa, VMSA_GPA, &vmsa_page());
        let mut d = LaunchDigest::new();
        d.extend(SnpPageType::Vmsa, VMSA_GPA, &vmsa_page());
        d.extend(SnpPageType::Normal, 0x1000, &normal_page());
        assert_ne!(c, d);
    }

    #[test]
    fn page_info_layout() {
        let mut ld = LaunchDigest::new();
        ld.extend(SnpPageType::Zero, 0x2000, &ZERO_PAGE);
        let prev = *ld.as_bytes();

        let gpa = 0x0123_4567_89ab_c000;
        let info = ld.page_info(SnpPageType::Normal, gpa, &normal_page());
        assert_eq!(info.len(), 0x70);
        assert_eq!(&info[0..48], &prev[..], "previous LD at offset 0");
        assert_eq!(&info[48..96], &Sha384::digest(normal_page())[..], "SHA-384 of the page at offset 48");
        assert_eq!(&info[96..98], &[0x70, 0x00], "length 0x70, little-endian, at offset 96");
        assert_eq!(info[98], 1, "page type at offset 98");
        assert_eq!(&info[99..104], &[0; 5], "IMI flag, VMPL3/2/1 permissions, reserved");
        assert_eq!(
            &info[104..112],
            &[0x00, 0xc0, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01],
            "GPA, little-endian, at offset 104"
        );

        // VMSA pages hash their contents; the others have zero CONTENTS whatever the page holds.
        let vmsa = ld.page_info(SnpPageType::Vmsa, VMSA_GPA, &vmsa_page());
        assert_eq!(&vmsa[48..96], &Sha384::digest(vmsa_page())[..]);
        assert_eq!(vmsa[98], 2);
        assert_eq!(&vmsa[104..112], &[0x00, 0xf0, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00]);
        for t in [SnpPageType::Zero, SnpPageType::Unmeasured, SnpPageType::Secrets, SnpPageType::Cpuid] {
            let info = ld.page_info(t, 0x5000, &normal_page());
            assert_eq!(&info[48..96], &[0u8; 48][..], "{t} pages have zero CONTENTS");
            assert_eq!(info[98], t as u8);
        }

        // extend() hashes exactly that PAGE_INFO.
        let mut next = ld.clone();
        next.extend(SnpPageType::Normal, gpa, &normal_page());
        assert_eq!(&next.as_bytes()[..], &Sha384::digest(info)[..]);
    }

    #[test]
    fn page_info_of_one_zero_page_by_hand() {
        // import hashlib
        // hashlib.sha384(bytes(96) + bytes([0x70, 0, 3, 0, 0, 0, 0, 0]) + (0x2000).to_bytes(8, 'little')).hexdigest()
        // (the same as: g = GCTX(); g.update_zero_pages(0x2000, 4096); print(g.hex_ld()))
        const EXPECTED: &str =
            "3e7701f69e330caf64044067b31ffcc351e77997477cd6b7079dc4a03390d307db2ab08b404318c3cc2e1e684cff8e77";
        let mut ld = LaunchDigest::new();
        ld.extend(SnpPageType::Zero, 0x2000, &ZERO_PAGE);
        assert_eq!(ld.to_hex(), EXPECTED);
    }

    #[test]
    fn page_type_numbers_and_names() {
        let expected = [(1, "NORMAL"), (2, "VMSA"), (3, "ZERO"), (4, "UNMEASURED"), (5, "SECRETS"), (6, "CPUID")];
        for (t, (raw, name)) in SnpPageType::ALL.into_iter().zip(expected) {
            assert_eq!(t as u8, raw);
            assert_eq!(t.name(), name);
            assert_eq!(SnpPageType::from_raw(raw), Some(t));
            assert_eq!(SnpPageType::from_name(name), Some(t));
            assert_eq!(t.to_string(), name);
        }
        assert_eq!(SnpPageType::from_raw(0), None);
        assert_eq!(SnpPageType::from_raw(7), None);
        assert_eq!(SnpPageType::from_name("normal"), None);
        assert_eq!(SnpPageType::from_name(""), None);
    }

    #[test]
    fn debug_and_display_print_hex() {
        let mut ld = LaunchDigest::new();
        ld.extend(SnpPageType::Zero, 0x2000, &ZERO_PAGE);
        assert_eq!(format!("{ld:?}"), format!("LaunchDigest({})", ld.to_hex()));
        assert_eq!(ld.to_string(), ld.to_hex());
        assert_eq!(ld.to_hex().len(), 96);
    }
}
