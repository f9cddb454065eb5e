//! The values of the access side: principals and their tokens, consents and legal grounds,
//! access requests, break-glass and exports. No decision lives here; `ops` makes them.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use ring::digest::{SHA256, digest};
use zeroize::Zeroizing;

use crate::access::policy::{ApprovalAct, Role, Scope};
use crate::domain::{Category, Purpose, RecordId, SchoolId, SubjectId};
use crate::error::VaultError;
use crate::records::vault::{RecordView, Subject};

/// How long a break-glass access stays open.
pub const BREAK_GLASS_WINDOW: Duration = Duration::hours(4);
/// After this long unreviewed, a break-glass access is overdue.
pub const BREAK_GLASS_REVIEW_DUE: Duration = Duration::hours(24);
/// Working days to stop processing after consent is withdrawn (Art. 8(7)).
pub const WITHDRAWAL_WORKING_DAYS: u32 = 15;

crate::domain::id_type!(
    /// A principal: a member of staff or a school app.
    PrincipalId,
    "principal id"
);
crate::domain::id_type!(
    /// A consent record.
    ConsentId,
    "consent id"
);
crate::domain::id_type!(
    /// An access request (and, once decided, the approval or denial).
    RequestId,
    "request id"
);
crate::domain::id_type!(
    /// One break-glass access.
    BreakGlassId,
    "break-glass id"
);

/// A bearer token. Secret: no Debug, Display or Serialize; compared only by hash, in constant time.
pub struct BearerToken(pub(crate) Zeroizing<String>);

impl BearerToken {
    /// Takes a token as presented (e.g. from an `Authorization: Bearer` header).
    pub fn new(s: &str) -> Self {
        BearerToken(Zeroizing::new(s.trim().to_owned()))
    }
    /// The token text, to hand to its holder once.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub(crate) fn hash(&self) -> Vec<u8> {
        digest(&SHA256, self.0.as_bytes()).as_ref().to_vec()
    }
}

/// An authenticated principal and the roles it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
/// Its fields are private: a principal is made only by authenticating a token or creating one,
/// so no caller can hand a session roles it does not hold.
pub struct Principal {
    pub(crate) id: PrincipalId,
    pub(crate) name: String,
    pub(crate) roles: Vec<(Scope, Role)>,
}

impl Principal {
    pub fn id(&self) -> PrincipalId {
        self.id
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn roles(&self) -> &[(Scope, Role)] {
        &self.roles
    }

    pub(crate) fn actor(&self) -> String {
        self.id.to_string()
    }
}

/// Who gave a consent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsentGiver {
    /// The subject. For a student, only when the operator confirmed the student is 18 or older.
    Subject { confirmed_adult: bool },
    /// The subject's legal representative (Civil Code Art. 22, 23).
    Guardian(SubjectId),
}

/// What a consent says (Art. 8(4)); operator and BIN come from the catalog.
#[derive(Clone, Debug)]
pub struct NewConsent {
    pub subject: SubjectId,
    pub given_by: ConsentGiver,
    /// `paper`, `e_signature` or `sms_code`.
    pub method: String,
    /// Where the evidence is: a scan reference, a signature id.
    pub evidence_ref: String,
    pub text_version: String,
    pub categories: Vec<Category>,
    pub third_party: bool,
    pub cross_border: bool,
    pub publication: bool,
    pub term_until: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consent {
    pub id: ConsentId,
    pub subject: SubjectId,
    pub operator: String,
    pub operator_bin: String,
    pub given_by: ConsentGiver,
    pub method: String,
    pub evidence_ref: String,
    pub text_version: String,
    pub categories: Vec<Category>,
    pub third_party: bool,
    pub cross_border: bool,
    pub publication: bool,
    pub given_at: DateTime<Utc>,
    pub term_until: Option<DateTime<Utc>>,
    pub withdrawn_at: Option<DateTime<Utc>>,
    pub withdrawal_deadline: Option<NaiveDate>,
    pub refusal_reason: Option<String>,
}

/// The grounds that make processing lawful without consent. The list follows Art. 9 of Law
/// No. 94-V; the codes are the vault's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegalGround {
    InternationalTreaty,
    LawEnforcementOrCourt,
    StateStatistics,
    StateFunctionsByLaw,
    VitalInterests,
    PubliclyAvailable,
    OperatorObligationByLaw,
}

impl LegalGround {
    pub const ALL: &'static [&'static str] = &[
        "international_treaty",
        "law_enforcement_or_court",
        "state_statistics",
        "state_functions_by_law",
        "vital_interests",
        "publicly_available",
        "operator_obligation_by_law",
    ];
    pub fn parse(s: &str) -> Result<Self, VaultError> {
        Ok(match s {
            "international_treaty" => Self::InternationalTreaty,
            "law_enforcement_or_court" => Self::LawEnforcementOrCourt,
            "state_statistics" => Self::StateStatistics,
            "state_functions_by_law" => Self::StateFunctionsByLaw,
            "vital_interests" => Self::VitalInterests,
            "publicly_available" => Self::PubliclyAvailable,
            "operator_obligation_by_law" => Self::OperatorObligationByLaw,
            other => {
                return Err(VaultError::Invalid(format!(
                    "unknown legal ground '{}': expected one of {}",
                    other.chars().take(64).collect::<String>(),
                    Self::ALL.join(", ")
                )));
            }
        })
    }
    pub fn as_str(self) -> &'static str {
        Self::ALL[self as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestStatus {
    Pending,
    Approved,
    Denied,
    Revoked,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Revoked => "revoked",
        }
    }
}

#[derive(Clone, Debug)]
pub struct NewAccessRequest {
    pub subject: SubjectId,
    pub record: Option<RecordId>,
    pub categories: Vec<Category>,
    pub purpose: Purpose,
    /// Read the categories, or transfer them; an approval opens only this act.
    pub act: ApprovalAct,
    pub justification: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRequest {
    pub id: RequestId,
    pub requester: PrincipalId,
    pub school: SchoolId,
    pub subject: SubjectId,
    pub record: Option<RecordId>,
    pub categories: Vec<Category>,
    pub purpose: Purpose,
    pub act: ApprovalAct,
    pub justification: String,
    pub status: RequestStatus,
    pub created_at: DateTime<Utc>,
    pub decided_by: Option<PrincipalId>,
    pub decided_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub uses_left: Option<u32>,
}

/// A subject access export: all data, decrypted, with consents and access history.
#[derive(Debug)]
pub struct SubjectExport {
    pub subject: Subject,
    pub records: Vec<RecordView>,
    pub consents: Vec<Consent>,
    pub history: Vec<crate::audit::chain::AuditRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakGlass {
    pub id: BreakGlassId,
    pub principal: PrincipalId,
    pub school: SchoolId,
    pub subject: SubjectId,
    pub justification: String,
    pub opened_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub reviewed_by: Option<PrincipalId>,
    pub reviewed_at: Option<DateTime<Utc>>,
    pub review_note: Option<String>,
}

/// The purpose of each category a write names. One form may carry several: an enrolment
/// records religion for religious education and ethnicity for legal requirements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purposes {
    pub(crate) default: Purpose,
    pub(crate) per_category: BTreeMap<Category, Purpose>,
}

impl Purposes {
    /// Every category for the same purpose.
    pub fn one(purpose: Purpose) -> Self {
        Purposes {
            default: purpose,
            per_category: BTreeMap::new(),
        }
    }

    /// `default` for every category not named in `per_category`.
    pub fn with(default: Purpose, per_category: BTreeMap<Category, Purpose>) -> Self {
        Purposes {
            default,
            per_category,
        }
    }

    pub fn of(&self, c: &Category) -> &Purpose {
        self.per_category.get(c).unwrap_or(&self.default)
    }
}

impl From<&Purpose> for Purposes {
    fn from(p: &Purpose) -> Self {
        Purposes::one(p.clone())
    }
}

impl From<&Purposes> for Purposes {
    fn from(p: &Purposes) -> Self {
        p.clone()
    }
}
