//! Domain newtypes. Each has a `parse` constructor and private fields, so an invalid value never
//! exists past the boundary where it was read.

use std::fmt;

use chrono::NaiveDate;

/// Why a domain value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DomainError {
    /// An IIN that is not 12 digits, has an impossible birth date or a wrong check digit.
    #[error("invalid IIN: {0}")]
    Iin(&'static str),
    /// A name (category, purpose, record type, field) with characters outside `[a-z0-9_]`.
    #[error(
        "invalid {kind} {value:?}: use 1 to 64 characters from a-z, 0-9 and '_', starting with a letter"
    )]
    Name { kind: &'static str, value: String },
    /// A school id with characters outside `[a-z0-9-]`.
    #[error(
        "invalid school id {0:?}: use 1 to 64 characters from a-z, 0-9 and '-', starting with a letter or digit"
    )]
    SchoolId(String),
    /// An id that is not a UUID.
    #[error(
        "invalid {kind} {value:?}: expected a UUID such as 67e55044-10b1-426f-9247-bb680e5fe0c8"
    )]
    Id { kind: &'static str, value: String },
    /// A subject kind that is not student, staff or guardian.
    #[error("invalid subject kind {0:?}: expected one of student, staff, guardian")]
    SubjectKind(String),
    /// A country that is not an ISO 3166-1 alpha-2 code.
    #[error("{0:?} is not an ISO 3166-1 alpha-2 country code (such as KZ, RU, DE)")]
    Country(String),
}

/// Kazakhstan's individual identification number: 12 digits, YYMMDD birth date, a century-and-sex
/// digit, a serial and a check digit. Personal data: its `Debug` hides the digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Iin([u8; 12]);

const IIN_WEIGHTS_1: [u32; 11] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const IIN_WEIGHTS_2: [u32; 11] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2];

impl Iin {
    /// Parses an IIN. Surrounding whitespace is ignored; anything else that is not a digit is not.
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let s = input.trim();
        if s.len() != 12 {
            return Err(DomainError::Iin("an IIN has exactly 12 digits"));
        }
        let mut digits = [0u8; 12];
        for (slot, b) in digits.iter_mut().zip(s.bytes()) {
            if !b.is_ascii_digit() {
                return Err(DomainError::Iin("an IIN has digits only"));
            }
            *slot = b - b'0';
        }
        let century = match digits[6] {
            1 | 2 => 1800,
            3 | 4 => 1900,
            5 | 6 => 2000,
            _ => {
                return Err(DomainError::Iin(
                    "the 7th digit (century and sex) must be 1 to 6",
                ));
            }
        };
        let year = century + i32::from(digits[0]) * 10 + i32::from(digits[1]);
        let month = u32::from(digits[2]) * 10 + u32::from(digits[3]);
        let day = u32::from(digits[4]) * 10 + u32::from(digits[5]);
        if NaiveDate::from_ymd_opt(year, month, day).is_none() {
            return Err(DomainError::Iin("the first six digits are not a real date"));
        }
        match Self::check_digit(&digits) {
            Some(c) if c == digits[11] => Ok(Iin(digits)),
            Some(_) => Err(DomainError::Iin("the check digit does not match")),
            None => Err(DomainError::Iin(
                "no check digit exists for these digits, so no such IIN is issued",
            )),
        }
    }

    /// The check digit of the first 11 digits, or `None` when both weighting passes give 10.
    pub fn check_digit(digits: &[u8]) -> Option<u8> {
        let pass = |w: &[u32; 11]| {
            digits
                .iter()
                .zip(w)
                .map(|(d, w)| u32::from(*d) * w)
                .sum::<u32>()
                % 11
        };
        let first = pass(&IIN_WEIGHTS_1);
        let c = if first == 10 {
            pass(&IIN_WEIGHTS_2)
        } else {
            first
        };
        // The mod-11 result is at most 10, and 10 means no valid number.
        (c < 10).then_some(c as u8)
    }

    /// The date of birth the IIN encodes.
    pub fn birth_date(&self) -> NaiveDate {
        let d = &self.0;
        let century = match d[6] {
            1 | 2 => 1800,
            3 | 4 => 1900,
            _ => 2000,
        };
        let year = century + i32::from(d[0]) * 10 + i32::from(d[1]);
        let month = u32::from(d[2]) * 10 + u32::from(d[3]);
        let day = u32::from(d[4]) * 10 + u32::from(d[5]);
        // parse() proved this date exists.
        NaiveDate::from_ymd_opt(year, month, day).unwrap_or(NaiveDate::MIN)
    }

    /// The canonical 12-digit form, for the blind index and for the subject's own export.
    pub fn digits(&self) -> String {
        self.0.iter().map(|d| char::from(b'0' + d)).collect()
    }
}

impl fmt::Debug for Iin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Iin(<redacted>)")
    }
}

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

macro_rules! name_type {
    ($(#[$doc:meta])* $t:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $t(String);

        impl $t {
            /// Parses a name of `[a-z][a-z0-9_]{0,63}`.
            pub fn parse(s: &str) -> Result<Self, DomainError> {
                if is_name(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(DomainError::Name { kind: $kind, value: truncate(s) })
                }
            }

            /// The name as written in the catalog.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// Error messages quote bad names; cap what they quote so a hostile input cannot flood a log.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

name_type!(
    /// A data category of the catalog (`health`, `identity`, ...).
    Category,
    "category"
);
name_type!(
    /// A purpose of processing from the catalog (`education`, `payroll`, ...).
    Purpose,
    "purpose"
);
name_type!(
    /// A record type of the catalog (`student`, `staff`, `guardian`).
    RecordType,
    "record type"
);
name_type!(
    /// A field of a record type.
    FieldName,
    "field name"
);

/// A school of the network: the domain in which roles are granted.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SchoolId(String);

impl SchoolId {
    /// Parses `[a-z0-9][a-z0-9-]{0,63}`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 64
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if ok {
            Ok(SchoolId(s.to_owned()))
        } else {
            Err(DomainError::SchoolId(truncate(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SchoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $t:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $t(::uuid::Uuid);

        impl $t {
            /// A fresh id: UUIDv7, the creation millisecond then 74 random bits. Time-ordered
            /// ids land at the end of a primary-key B-tree instead of on a random page, so a
            /// commit writes a few pages, not one per row.
            pub fn new_random() -> Self {
                let v4 = ::uuid::Uuid::new_v4();
                let mut r = [0u8; 10];
                r.copy_from_slice(&v4.as_bytes()[..10]);
                Self::from_random_bytes(r)
            }

            /// Parses a UUID in its hyphenated form.
            pub fn parse(s: &str) -> Result<Self, $crate::domain::DomainError> {
                ::uuid::Uuid::try_parse(s)
                    .map(Self)
                    .map_err(|_| $crate::domain::DomainError::Id { kind: $kind, value: s.chars().take(80).collect() })
            }

            /// A UUIDv7 id: the current millisecond and 10 bytes of OS randomness.
            pub fn from_random_bytes(b: [u8; 10]) -> Self {
                let ms = ::std::time::SystemTime::now()
                    .duration_since(::std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                Self(::uuid::Builder::from_unix_timestamp_millis(ms, &b).into_uuid())
            }

            /// The 16 bytes, as bound into AAD.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl ::std::fmt::Display for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

pub(crate) use id_type;

id_type!(
    /// A data subject: a student, a staff member or a guardian.
    SubjectId,
    "subject id"
);
id_type!(
    /// One record of a subject.
    RecordId,
    "record id"
);
id_type!(
    /// One data-encryption key, for one (record, category).
    DekId,
    "DEK id"
);

/// Who a subject is to the school.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SubjectKind {
    Student,
    Staff,
    Guardian,
}

impl SubjectKind {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        match s {
            "student" => Ok(Self::Student),
            "staff" => Ok(Self::Staff),
            "guardian" => Ok(Self::Guardian),
            other => Err(DomainError::SubjectKind(truncate(other))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Student => "student",
            Self::Staff => "staff",
            Self::Guardian => "guardian",
        }
    }
}

impl fmt::Display for SubjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

const ISO_3166: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// An ISO 3166-1 alpha-2 country code.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country(String);

impl Country {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let up = s.trim().to_ascii_uppercase();
        if up.len() == 2 && ISO_3166.split(' ').any(|c| c == up) {
            Ok(Country(up))
        } else {
            Err(DomainError::Country(s.chars().take(16).collect()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Country {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a valid IIN from its first 11 digits, for tests.
    fn complete(prefix: &str) -> Option<String> {
        let d: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
        Iin::check_digit(&d).map(|c| format!("{prefix}{c}"))
    }

    #[test]
    fn check_digit_first_pass() {
        // 9*1 + 1*4 + 1*6 + 3*7 + 1*9 + 2*10 + 3*11 = 102; 102 mod 11 = 3.
        assert_eq!(
            Iin::check_digit(&[9, 0, 0, 1, 0, 1, 3, 0, 1, 2, 3]),
            Some(3)
        );
        assert!(Iin::parse("900101301233").is_ok());
    }

    #[test]
    fn check_digit_second_pass() {
        // Search serials for prefixes whose first pass gives 10, so the second weighting decides.
        let mut found = false;
        for serial in 0..10_000u32 {
            let prefix = format!("850312{}{:04}", 3, serial);
            let d: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
            let first: u32 = d
                .iter()
                .zip(IIN_WEIGHTS_1)
                .map(|(x, w)| u32::from(*x) * w)
                .sum::<u32>()
                % 11;
            if first == 10 {
                let second: u32 = d
                    .iter()
                    .zip(IIN_WEIGHTS_2)
                    .map(|(x, w)| u32::from(*x) * w)
                    .sum::<u32>()
                    % 11;
                assert_eq!(Iin::check_digit(&d), (second < 10).then_some(second as u8));
                if second < 10 {
                    let iin = format!("{prefix}{second}");
                    assert!(Iin::parse(&iin).is_ok(), "{iin}");
                    found = true;
                }
            }
        }
        assert!(found, "no prefix exercised the second pass");
    }

    #[test]
    fn valid_iins_accepted() {
        let mut accepted = 0;
        for prefix in [
            "05050250012",
            "12022960001",
            "99123140123",
            "00022950777",
            "87070140001",
        ] {
            if let Some(iin) = complete(prefix) {
                let parsed = Iin::parse(&iin).unwrap_or_else(|e| panic!("{iin}: {e}"));
                assert_eq!(parsed.digits(), iin);
                accepted += 1;
            }
        }
        assert!(accepted >= 4);
        let iin = Iin::parse(" 900101301233 ").unwrap();
        assert_eq!(
            iin.birth_date(),
            NaiveDate::from_ymd_opt(1990, 1, 1).unwrap()
        );
    }

    #[test]
    fn invalid_iins_refused() {
        let cases = [
            ("900101301234", "check digit"),
            ("90010130123", "12 digits"),
            ("9001013012333", "12 digits"),
            ("90010130123a", "digits only"),
            ("900230301233", "real date"), // 30 February
            ("901301301233", "real date"), // month 13
            ("900101701233", "7th digit"),
            ("", "12 digits"),
        ];
        for (input, why) in cases {
            match Iin::parse(input) {
                Err(DomainError::Iin(msg)) => assert!(msg.contains(why), "{input}: {msg}"),
                other => panic!("{input}: expected refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn leap_day_depends_on_century() {
        // 29 Feb 2000 exists (digit 5 = 2000s), 29 Feb 1900 does not (digit 3 = 1900s).
        let ok = (0..100)
            .find_map(|n| complete(&format!("0002295{n:04}")))
            .expect("some serial has a check digit");
        assert!(Iin::parse(&ok).is_ok(), "{ok}");
        let bad = (0..100)
            .find_map(|n| complete(&format!("0002293{n:04}")))
            .expect("some serial has a check digit");
        assert_eq!(
            Iin::parse(&bad),
            Err(DomainError::Iin("the first six digits are not a real date"))
        );
    }

    #[test]
    fn iin_debug_hides_digits() {
        let iin = Iin::parse("900101301233").unwrap();
        assert!(!format!("{iin:?}").contains("900101"));
    }

    #[test]
    fn display_honours_width_and_alignment() {
        // Regression: `vaultctl keyring status` printed a ragged table because Display ignored
        // the format width.
        let c = Category::parse("health").unwrap();
        assert_eq!(format!("[{c:<10}]"), "[health    ]");
        assert_eq!(
            format!("[{:>8}]", SchoolId::parse("s-1").unwrap()),
            "[     s-1]"
        );
        assert_eq!(format!("[{:<9}]", SubjectKind::Student), "[student  ]");
    }

    #[test]
    fn names_parse() {
        assert!(Category::parse("health").is_ok());
        assert!(Category::parse("criminal_record").is_ok());
        for bad in ["", "Health", "1abc", "a-b", "a b", &"x".repeat(65)] {
            assert!(Category::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SchoolId::parse("school-12").is_ok());
        assert!(SchoolId::parse("School").is_err());
        assert!(SchoolId::parse("../etc").is_err());
        assert!(RecordId::parse("not-a-uuid").is_err());
        let id = RecordId::new_random();
        assert_eq!(RecordId::parse(&id.to_string()), Ok(id));
    }

    /// The century digit and every date digit count: each birth date reads back in its century,
    /// and 29 February exists in 2000 and 2012 but not in 1800, 1900, 2001 or 2013.
    #[test]
    fn birth_dates_by_century_and_leap_year() {
        let cases = [
            ("8712313", Some((1987, 12, 31))),
            ("1202295", Some((2012, 2, 29))),
            ("0002296", Some((2000, 2, 29))),
            ("5406151", Some((1854, 6, 15))),
            ("9911302", Some((1899, 11, 30))),
            ("0112314", Some((1901, 12, 31))),
            ("2503186", Some((2025, 3, 18))),
            ("0002293", None),
            ("0002291", None),
            ("0102295", None),
            ("1302295", None),
        ];
        for (head, want) in cases {
            let iin = (0..1000)
                .find_map(|n| complete(&format!("{head}{n:04}")))
                .expect("some serial has a check digit");
            match want {
                Some((y, m, d)) => assert_eq!(
                    Iin::parse(&iin).map(|i| i.birth_date()).ok(),
                    NaiveDate::from_ymd_opt(y, m, d),
                    "{iin}"
                ),
                None => assert!(
                    matches!(Iin::parse(&iin), Err(DomainError::Iin(m)) if m.contains("real date")),
                    "{iin}"
                ),
            }
        }
    }

    /// School ids: `[a-z0-9][a-z0-9-]{0,63}` exactly, read back as given; a refused one is quoted
    /// only up to 80 characters.
    #[test]
    fn school_ids_at_their_edges() {
        for ok in ["school-1", "1st", "a", &"a".repeat(64)] {
            assert_eq!(
                SchoolId::parse(ok).map(|s| s.as_str().to_owned()),
                Ok(ok.to_owned())
            );
        }
        for bad in ["", "-abc", "School", "a_b", "a b", &"a".repeat(65)] {
            assert!(SchoolId::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            SchoolId::parse(&"A".repeat(200)),
            Err(DomainError::SchoolId("A".repeat(80)))
        );
        let iin = Iin::parse("900101301233").unwrap();
        assert_eq!(format!("{iin:?}"), "Iin(<redacted>)");
    }

    /// Countries: ISO 3166-1 alpha-2 codes, any case and surrounding space, shown in capitals.
    #[test]
    fn countries_are_iso_codes_shown_in_capitals() {
        assert_eq!(
            Country::parse(" kz ").map(|c| c.to_string()),
            Ok("KZ".to_owned())
        );
        assert_eq!(
            Country::parse("de").map(|c| c.as_str().to_owned()),
            Ok("DE".to_owned())
        );
        for bad in ["", "K", "KAZ", "ZZ", "K1", "KZ KZ"] {
            assert!(Country::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format!("{:>4}", Country::parse("RU").unwrap()), "  RU");
    }
}
