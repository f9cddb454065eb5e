//! The vault service: the one entry point the HTTP server and `vaultctl` call for subjects and
//! records. Writes span two stores; the order of the two transactions is chosen so that a crash
//! between them never leaves a readable half-record:
//!
//! - create/update: DEKs first (key store), then the record and its fields (data store). A crash
//!   between leaves unused DEKs that open nothing; a failed data write removes them again.
//! - shred: mark the record `shredding` (data), destroy its DEKs (key), then delete the
//!   ciphertext and mark it `shredded` (data). A crash at any point is finished on the next open.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ring::rand::SystemRandom;

use crate::access::policy::{DenyReason, Policy};
use crate::audit::chain::{AuditEvent, AuditKeys, AuditLog, AuditRecord, AuditReport, Outcome};
use crate::catalog::Catalog;
use crate::clock::{Clock, SystemClock};
use crate::domain::{
    Category, FieldName, Iin, RecordId, RecordType, SchoolId, SubjectId, SubjectKind,
};
use crate::error::VaultError;
use crate::keys::custodian::{KeyringError, Unlock};
use crate::keys::envelope::{CryptoError, WrappedDek};
use crate::keys::keyring::{KekInfo, Keyring, SealTo};
use crate::keys::record_keys::RecordKeys;
use crate::records::writer::{NewRecord, RecordWriter, Written};
use crate::stats::{CommitObserver, Observers, QueueDepths};
use crate::store::repo::deks::DekRow;
use crate::store::repo::records::{FieldRow, NewField, NewRows, RecordRow};
use crate::store::repo::retention::Shred;
use crate::store::repo::{deks, keyring, records, retention, subjects};
use crate::store::{StoreError, Stores};
use crate::value::FieldValue;

/// A data subject as the data store knows it. No personal data: the IIN is only a blind index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub id: SubjectId,
    pub school: SchoolId,
    pub kind: SubjectKind,
    pub created_at: DateTime<Utc>,
    pub left_at: Option<DateTime<Utc>>,
    /// Blocked (Art. 25(2)(8)): stored, not processed.
    pub blocked: bool,
}

/// What creating a subject needs.
#[derive(Debug)]
pub struct NewSubject {
    pub school: SchoolId,
    pub kind: SubjectKind,
    pub iin: Option<Iin>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub id: RecordId,
    pub subject: SubjectId,
    pub school: SchoolId,
    pub record_type: RecordType,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why a field came back sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealReason {
    /// The caller did not ask to open this category.
    NotAllowed,
    /// The category's key is gone: the data was crypto-shredded.
    Shredded,
    /// The policy forbids it, with the reason.
    Forbidden(DenyReason),
    /// A director's approval would open it.
    ApprovalRequired,
    /// A special category without consent or a legal ground on file.
    NoLegalBasis,
    /// The subject is blocked (stored, not processed).
    Blocked,
}

impl SealReason {
    /// A stable code for APIs.
    pub fn as_str(&self) -> &'static str {
        match self {
            SealReason::NotAllowed => "not_allowed",
            SealReason::Shredded => "shredded",
            SealReason::Forbidden(_) => "forbidden",
            SealReason::ApprovalRequired => "approval_required",
            SealReason::NoLegalBasis => "no_legal_basis",
            SealReason::Blocked => "blocked",
        }
    }

    /// A sentence for people (and the audit log): never a value.
    pub fn describe(&self) -> String {
        match self {
            SealReason::Forbidden(r) => format!("forbidden: {r}"),
            SealReason::ApprovalRequired => "approval required from a director".into(),
            SealReason::NoLegalBasis => "no consent or legal ground on file".into(),
            SealReason::Blocked => "subject is blocked".into(),
            SealReason::Shredded => "shredded".into(),
            SealReason::NotAllowed => "not requested".into(),
        }
    }
}

/// One field of a read record: its value, or a sealed marker naming category and reason.
#[derive(Debug, PartialEq)]
pub enum FieldView {
    Open {
        category: Category,
        value: FieldValue,
    },
    Sealed {
        category: Category,
        reason: SealReason,
    },
}

#[derive(Debug)]
pub struct RecordView {
    pub meta: RecordMeta,
    pub fields: BTreeMap<FieldName, FieldView>,
}

/// A change to one field on update: a new value, or removal.
#[derive(Debug)]
pub enum FieldChange {
    Set(FieldValue),
    Remove,
}

/// What a shred destroyed: no values, only what and how many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShredReceipt {
    pub record: RecordId,
    pub categories: Vec<Category>,
    pub deks_destroyed: u64,
    pub fields_deleted: u64,
}

/// One KEK version and the number of DEKs it wraps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KekStatus {
    pub kek: KekInfo,
    pub deks: u64,
}

/// The vault service over both stores with the unsealed keyring.
pub struct Vault {
    policy: Arc<Policy>,
    /// The unsealed keyring, swapped when a custodian changes it (rotation, retirement).
    pub(crate) keyring: std::sync::RwLock<Arc<Keyring>>,
    /// The keyring row's generation the in-memory keyring came from.
    pub(crate) generation: std::sync::atomic::AtomicI64,
    /// What is trusted of the in-memory keyring: its generation, sealed bytes and chain link.
    pub(crate) tip: std::sync::Mutex<crate::keys::open::Tip>,
    /// The stored keyring last refused (generation, SHA-256), so a refusal is logged once.
    pub(crate) refused: std::sync::Mutex<Option<(i64, Vec<u8>)>>,
    /// What unsealed it, kept to unseal a newer generation.
    pub(crate) unlock: Unlock,
    stores: Stores,
    rng: SystemRandom,
    clock: Arc<dyn Clock>,
    audit: AuditLog,
    writer: RecordWriter,
    observers: Observers,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").finish_non_exhaustive()
    }
}

impl Vault {
    /// Makes a fresh keyring for every category the catalog collects and stores it sealed, as
    /// the self-signed start of its chain, pinned in the data store. Refuses when the key store
    /// already has one, or the data store already pins one.
    pub async fn init_keyring(
        stores: &Stores,
        catalog: &Catalog,
        seal_to: &SealTo,
        now: DateTime<Utc>,
    ) -> Result<(), VaultError> {
        crate::keys::open::init_keyring(stores, catalog, seal_to, now).await
    }

    /// The sealed keyring exactly as stored: an age file.
    pub async fn sealed_keyring(stores: &Stores) -> Result<Vec<u8>, VaultError> {
        keyring::sealed(&stores.keys)
            .await?
            .map(|r| r.sealed)
            .ok_or(VaultError::KeyringMissing)
    }

    /// Unseals the keyring and opens the service. Finishes any shred a crash interrupted.
    pub async fn open(
        stores: Stores,
        policy: Arc<Policy>,
        unlock: Unlock,
    ) -> Result<Vault, VaultError> {
        Self::open_with_clock(stores, policy, unlock, Arc::new(SystemClock)).await
    }

    /// Opens with an injected clock (tests of expiry and deadlines move it instead of sleeping).
    pub async fn open_with_clock(
        stores: Stores,
        policy: Arc<Policy>,
        unlock: Unlock,
        clock: Arc<dyn Clock>,
    ) -> Result<Vault, VaultError> {
        // The stored keyring is judged (its chain from its genesis, the data store's pin)
        // before it is unsealed; a refused one is never opened.
        let (keyring, tip, unlock) =
            crate::keys::open::open_keyring(&stores, unlock, clock.as_ref()).await?;
        for c in policy.catalog().collected_categories() {
            keyring.newest_kek(c)?;
        }
        let observers = Observers::default();
        let audit = AuditLog::start(
            &stores,
            AuditKeys::of(&keyring)?,
            clock.clone(),
            observers.clone(),
        )?;
        let writer = RecordWriter::start(stores.clone(), audit.chain(), observers.clone());
        let vault = Vault {
            policy,
            keyring: std::sync::RwLock::new(Arc::new(keyring)),
            generation: std::sync::atomic::AtomicI64::new(tip.generation),
            tip: std::sync::Mutex::new(tip),
            refused: std::sync::Mutex::new(None),
            unlock,
            stores,
            rng: SystemRandom::new(),
            clock,
            audit,
            writer,
            observers,
        };
        vault.resume_shreds().await?;
        Ok(vault)
    }

    /// Tells `observer` of every batch the group commits write from now on. Only the first
    /// observer set is kept: false when one already was.
    pub fn observe_commits(&self, observer: Arc<dyn CommitObserver>) -> bool {
        self.observers.set(observer)
    }

    /// How many writes wait in each group commit's queue.
    pub fn queue_depths(&self) -> QueueDepths {
        QueueDepths {
            records: self.writer.queued(),
            audit: self.audit.queued(),
        }
    }

    /// Both stores answer, and the key store holds the keyring this vault holds or its signed
    /// successor (loaded then): what `/readyz` reports. A refused keyring answers
    /// `KeyringError::Refused`.
    pub async fn check_ready(&self) -> Result<(), VaultError> {
        self.stores.ping().await?;
        self.refresh_keyring().await?;
        Ok(())
    }

    /// KEK versions and how many DEKs each wraps, for the custodian. No key bytes.
    pub async fn key_status(&self) -> Result<Vec<KekStatus>, VaultError> {
        let rows = deks::count_by_version(&self.stores.keys).await?;
        let count = |c: &Category, v: u32| {
            rows.iter()
                .find(|(rc, rv, _)| rc == c.as_str() && *rv as u32 == v)
                .map_or(0, |r| r.2 as u64)
        };
        Ok(self
            .keyring()
            .kek_versions()
            .into_iter()
            .map(|k| KekStatus {
                deks: count(&k.category, k.version),
                kek: k,
            })
            .collect())
    }

    pub fn catalog(&self) -> &Catalog {
        self.policy.catalog()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub(crate) fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Where audit anchors go besides the key store (a witness file, standard output) and how
    /// often. The witness file is created if missing and must be writable now; its newest
    /// anchor, if any, is what this process knows from then on.
    pub async fn configure_audit_anchors(
        &self,
        o: crate::audit::anchor::AnchorOptions,
    ) -> Result<(), VaultError> {
        self.audit
            .anchors()
            .configure_with_witness(o)
            .await
            .map_err(|e| VaultError::Invalid(format!("audit witness: {e}")))
    }

    /// Anchors the newest committed checkpoint now (instead of at the next interval) and answers
    /// the anchor this process holds.
    pub async fn sync_audit_anchor(&self) -> Option<crate::audit::anchor::Anchor> {
        self.audit.anchors().sync().await
    }

    pub(crate) fn rng(&self) -> &SystemRandom {
        &self.rng
    }

    /// Checks the audit chain and its signed checkpoints; reports the first broken entry.
    pub async fn verify_audit(&self) -> Result<AuditReport, VaultError> {
        Ok(self.audit.verify(&self.stores.data).await?)
    }

    crate::unscoped! {
        /// Every audit entry about a subject: who touched its data, when, why, with what outcome.
        async fn access_history(&self, subject: SubjectId) -> Result<Vec<AuditRecord>, VaultError> {
            Ok(AuditLog::for_subject(&self.stores.data, subject).await?)
        }
    }

    crate::unscoped! {
        /// The whole audit log, oldest first.
        async fn audit_entries(&self) -> Result<Vec<AuditRecord>, VaultError> {
            Ok(AuditLog::all(&self.stores.data).await?)
        }
    }

    /// A record's metadata, shredded or not.
    pub(crate) async fn record_meta_any(&self, id: RecordId) -> Result<RecordMeta, VaultError> {
        let row = records::find(&self.stores.data, id)
            .await?
            .ok_or(VaultError::RecordNotFound(id))?;
        row.meta()
    }

    crate::unscoped! {
        /// A record's metadata (no values).
        async fn record_meta(&self, id: RecordId) -> Result<RecordMeta, VaultError> {
            self.record_row(id).await?.meta()
        }
    }

    crate::unscoped! {
        /// The ids of a subject's records that still hold data (not shredded).
        async fn subject_record_ids(
            &self,
            subject: SubjectId,
        ) -> Result<Vec<RecordId>, VaultError> {
            records::active_ids_of(&self.stores.data, subject).await
        }
    }

    crate::unscoped! {
        /// The categories a record holds fields in.
        async fn record_categories(&self, id: RecordId) -> Result<BTreeSet<Category>, VaultError> {
            Ok(records::field_categories(&self.stores.data, id).await?)
        }
    }

    crate::unscoped! {
        fn stores(&self) -> &Stores {
            &self.stores
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    crate::unscoped! {
        /// Creates a subject; the IIN is kept only as a blind index.
        async fn create_subject(&self, new: NewSubject) -> Result<Subject, VaultError> {
            let id = SubjectId::new_random();
            let now = self.clock.now();
            if new.iin.is_some() {
                // A custodian may have begun or ended a blind-index rotation since this process
                // loaded the keyring: an index under a destroyed key would never be found.
                self.refresh_keyring().await?;
            }
            // During a blind-index rotation the IIN may be held under either key.
            if let Some(i) = &new.iin
                && subjects::iin_taken(&self.stores.data, self.iin_lookups(i), &new.school).await?
            {
                return Err(VaultError::DuplicateIin);
            }
            let iin_index = new.iin.as_ref().map(|i| self.iin_index(i));
            let subj = Subject {
                id,
                school: new.school,
                kind: new.kind,
                created_at: now,
                left_at: None,
                blocked: false,
            };
            subjects::insert(&self.stores.data, &subj, iin_index).await?;
            Ok(subj)
        }
    }

    /// Every subject with this IIN, oldest first: one per school at most, since a student who
    /// moves school is enrolled again there, and a school must not learn of another's enrolment.
    pub(crate) async fn subjects_by_iin(&self, iin: &Iin) -> Result<Vec<Subject>, VaultError> {
        let found = subjects::by_iin(&self.stores.data, self.iin_lookups(iin)).await?;
        if found.is_empty() && self.newer_index_key().await {
            return subjects::by_iin(&self.stores.data, self.iin_lookups(iin)).await;
        }
        Ok(found)
    }

    /// After a miss: whether a custodian changed the blind-index keys since this process loaded
    /// the keyring (a rotation begun or finished), so the lookup is worth trying again. A
    /// keyring that cannot be loaded leaves the miss as it is; writes report the refusal.
    async fn newer_index_key(&self) -> bool {
        let before = self.keyring().index_key_id();
        matches!(self.refresh_keyring().await, Ok(true)) && self.keyring().index_key_id() != before
    }

    /// The IIN's index for a new subject, under the newest blind-index key (the next one during
    /// a rotation), with that key's identifier.
    fn iin_index(&self, iin: &Iin) -> (Vec<u8>, Vec<u8>) {
        let k = self.keyring();
        let digits = iin.digits();
        let ix = k
            .blind_index_next("iin", digits.as_bytes())
            .unwrap_or_else(|| k.blind_index("iin", digits.as_bytes()));
        (ix.as_bytes().to_vec(), k.index_key_id().to_vec())
    }

    /// The IIN's indexes to look for, newest key first: during a blind-index rotation a subject
    /// not yet moved is still under the old key.
    fn iin_lookups(&self, iin: &Iin) -> Vec<Vec<u8>> {
        let k = self.keyring();
        let digits = iin.digits();
        k.blind_index_next("iin", digits.as_bytes())
            .into_iter()
            .chain([k.blind_index("iin", digits.as_bytes())])
            .map(|ix| ix.as_bytes().to_vec())
            .collect()
    }

    crate::unscoped! {
        async fn subject(&self, id: SubjectId) -> Result<Subject, VaultError> {
            subjects::get(&self.stores.data, id)
                .await?
                .ok_or(VaultError::SubjectNotFound(id))
        }
    }

    crate::unscoped! {
        /// Finds a subject by IIN through the blind index, without the IIN ever being stored.
        /// During a blind-index rotation it tries the new index, then the old.
        async fn find_subject_by_iin(&self, iin: &Iin) -> Result<Option<Subject>, VaultError> {
            for again in [false, true] {
                if again && !self.newer_index_key().await {
                    break;
                }
                for ix in self.iin_lookups(iin) {
                    if let Some(s) = subjects::one_by_iin(&self.stores.data, ix).await? {
                        return Ok(Some(s));
                    }
                }
            }
            Ok(None)
        }
    }

    /// Checks fields against the catalog and returns each with its category.
    fn check_fields<'a>(
        &self,
        record_type: &RecordType,
        fields: impl IntoIterator<Item = (&'a FieldName, Option<&'a FieldValue>)>,
    ) -> Result<Vec<(&'a FieldName, Category)>, VaultError> {
        let rt = self
            .catalog()
            .record_type(record_type)
            .ok_or_else(|| VaultError::UnknownRecordType(record_type.clone()))?;
        let mut out = Vec::new();
        for (name, value) in fields {
            let def = rt.field(name).ok_or_else(|| VaultError::UnknownField {
                record_type: record_type.clone(),
                field: name.clone(),
            })?;
            if let Some(v) = value {
                v.check(def.field_type)
                    .map_err(|expected| VaultError::InvalidValue {
                        field: name.clone(),
                        expected,
                    })?;
            }
            out.push((name, def.category.clone()));
        }
        Ok(out)
    }

    /// Seals the given fields with `keys`, returning the rows to insert.
    fn seal_rows(
        &self,
        keys: &mut RecordKeys,
        record: RecordId,
        fields: &[(&FieldName, Category, &FieldValue)],
    ) -> Result<Vec<NewField>, VaultError> {
        let keyring = self.keyring();
        fields
            .iter()
            .map(|(name, cat, value)| {
                let ct = keys.seal(&keyring, &self.rng, name, cat, value.as_bytes())?;
                Ok(NewField::new(record, name, cat, ct))
            })
            .collect()
    }

    /// Stores newly made DEKs in one key-store transaction.
    async fn insert_deks(&self, record: RecordId, deks: &[WrappedDek]) -> Result<(), VaultError> {
        if deks.is_empty() {
            return Ok(());
        }
        Ok(deks::insert(&self.stores.keys, record, deks, self.clock.now()).await?)
    }

    /// Removes DEKs whose data write failed, so nothing is left half-written.
    async fn remove_deks(&self, deks: &[WrappedDek]) {
        let ids: Vec<String> = deks.iter().map(|d| d.id.to_string()).collect();
        if ids.is_empty() {
            return;
        }
        if let Err(e) = deks::delete_ids(&self.stores.keys, ids).await {
            // Unused DEKs protect no data; leaving them is safe, only untidy.
            tracing::warn!(error = %e, "could not remove DEKs of a failed write");
        }
    }

    crate::unscoped! {
        /// Writes a new record for a subject: every field validated against the catalog and sealed.
        async fn write_record(
            &self,
            subject_id: SubjectId,
            record_type: &RecordType,
            fields: &BTreeMap<FieldName, FieldValue>,
        ) -> Result<RecordMeta, VaultError> {
            let subj = self.subject(subject_id).await?;
            self.write_record_for(&subj, record_type, fields, |_| Vec::new())
                .await
        }
    }

    /// `write_record` for a subject already loaded; `audit` gives the entries to commit with
    /// the record, in the same transaction.
    pub(crate) async fn write_record_for(
        &self,
        subj: &Subject,
        record_type: &RecordType,
        fields: &BTreeMap<FieldName, FieldValue>,
        audit: impl Fn(&RecordMeta) -> Vec<AuditEvent>,
    ) -> Result<RecordMeta, VaultError> {
        if fields.is_empty() {
            return Err(VaultError::EmptyRecord);
        }
        let checked = self.check_fields(record_type, fields.iter().map(|(n, v)| (n, Some(v))))?;
        let expected = self
            .catalog()
            .record_type(record_type)
            .map(|rt| rt.subject_kind)
            .ok_or_else(|| VaultError::UnknownRecordType(record_type.clone()))?;
        if subj.kind != expected {
            return Err(VaultError::WrongSubjectKind {
                record_type: record_type.clone(),
                subject: subj.id,
                expected,
                actual: subj.kind,
            });
        }
        let to_seal: Vec<_> = checked
            .into_iter()
            .zip(fields.values())
            .map(|((n, c), v)| (n, c, v))
            .collect();
        let id = RecordId::new_random();
        // The writer refuses a record sealed under a keyring a custodian has since replaced;
        // then it is sealed again under the new one. Two tries suffice unless rotations race.
        for _ in 0..3 {
            // Generation before keyring: a rotation in between reads as stale, never as fresh.
            let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
            let mut keys = RecordKeys::new(id);
            let rows = self.seal_rows(&mut keys, id, &to_seal)?;
            let now = self.clock.now();
            let meta = RecordMeta {
                id,
                subject: subj.id,
                school: subj.school.clone(),
                record_type: record_type.clone(),
                version: 1,
                created_at: now,
                updated_at: now,
            };
            let rec = NewRecord {
                generation,
                rows: NewRows::new(&meta, &keys.take_new(), rows),
                audit: audit(&meta),
            };
            match self.writer.write(rec).await? {
                Written::Stored => return Ok(meta),
                Written::StaleKeyring => {
                    self.refresh_keyring().await?;
                }
            }
        }
        Err(VaultError::KeyringBusy)
    }

    async fn record_row(&self, id: RecordId) -> Result<RecordRow, VaultError> {
        let row = records::find(&self.stores.data, id)
            .await?
            .ok_or(VaultError::RecordNotFound(id))?;
        if !row.is_active() {
            return Err(VaultError::RecordShredded(id));
        }
        Ok(row)
    }

    async fn wrapped_deks(
        &self,
        id: RecordId,
        categories: &BTreeSet<Category>,
    ) -> Result<Vec<WrappedDek>, VaultError> {
        if categories.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = categories.iter().map(Category::as_str).collect();
        deks::wrapped_of(&self.stores.keys, id, names).await
    }

    async fn unwrap_all(
        &self,
        id: RecordId,
        categories: &BTreeSet<Category>,
    ) -> Result<RecordKeys, VaultError> {
        let mut keys = RecordKeys::new(id);
        let mut keyring = self.keyring();
        for w in self.wrapped_deks(id, categories).await? {
            let mut r = keys.unwrap(&keyring, &w);
            if matches!(r, Err(KeyringError::NoVersion { .. })) && self.refresh_keyring().await? {
                // A custodian rotated since this keyring was loaded: use the new one.
                keyring = self.keyring();
                r = keys.unwrap(&keyring, &w);
            }
            r.map_err(|source| VaultError::DekTampered {
                record: id,
                category: w.category.clone(),
                source,
            })?;
        }
        Ok(keys)
    }

    crate::unscoped! {
        /// Reads a record, opening only the categories in `allowed`; the others come back sealed.
        async fn read_record(
            &self,
            id: RecordId,
            allowed: &BTreeSet<Category>,
        ) -> Result<RecordView, VaultError> {
            let meta = self.record_row(id).await?.meta()?;
            let fields = self.record_fields(id).await?;
            self.open_fields(meta, fields, allowed).await
        }
    }

    /// A live record, its subject and its sealed field rows in one query: reads run on every
    /// page that shows a student, and each round trip to the store costs more than the crypto.
    /// `visible` says whether the reader may know of records of a school; it is asked before the
    /// record's state, so a shredded record of another school is as unknown as a random id.
    pub(crate) async fn record_for_read(
        &self,
        id: RecordId,
        visible: impl Fn(&SchoolId) -> bool,
    ) -> Result<(RecordMeta, Subject, Vec<FieldRow>), VaultError> {
        let rows = records::fields_with_record(&self.stores.data, id).await?;
        let head = match rows.first() {
            Some((_, Some(r), Some(s))) if r.is_active() => Some((r.clone(), s.clone())),
            _ => None,
        };
        let Some((r, s)) = head else {
            // Not found, shredded or without fields: the plain queries give the right answer.
            if !visible(&self.record_meta_any(id).await?.school) {
                return Err(VaultError::RecordNotFound(id));
            }
            let meta = self.record_meta(id).await?;
            let subj = self.subject(meta.subject).await?;
            return Ok((meta, subj, Vec::new()));
        };
        if !visible(&r.school()?) {
            return Err(VaultError::RecordNotFound(id));
        }
        let fields = rows.into_iter().map(|(f, _, _)| f).collect();
        Ok((r.meta()?, subjects::decode(s)?, fields))
    }

    /// A record's sealed field rows.
    pub(crate) async fn record_fields(&self, id: RecordId) -> Result<Vec<FieldRow>, VaultError> {
        Ok(records::fields(&self.stores.data, id).await?)
    }

    /// Opens the given field rows of a record, only in the `allowed` categories.
    pub(crate) async fn open_fields(
        &self,
        meta: RecordMeta,
        fields: Vec<FieldRow>,
        allowed: &BTreeSet<Category>,
    ) -> Result<RecordView, VaultError> {
        let id = meta.id;
        let wanted: BTreeSet<Category> = fields
            .iter()
            .filter_map(FieldRow::category)
            .filter(|c| allowed.contains(c))
            .collect();
        let keys = self.unwrap_all(id, &wanted).await?;
        let mut out = BTreeMap::new();
        for f in fields {
            let (name, category) = f.name_and_category()?;
            let view = if !allowed.contains(&category) {
                FieldView::Sealed {
                    category,
                    reason: SealReason::NotAllowed,
                }
            } else {
                match keys.open(&name, &category, &f.ciphertext) {
                    None => FieldView::Sealed {
                        category,
                        reason: SealReason::Shredded,
                    },
                    Some(Err(source)) => {
                        return Err(VaultError::FieldTampered {
                            record: id,
                            field: name,
                            source,
                        });
                    }
                    Some(Ok(plain)) => FieldView::Open {
                        category,
                        value: FieldValue::from_plaintext(&plain).ok_or(
                            VaultError::FieldTampered {
                                record: id,
                                field: name.clone(),
                                source: CryptoError::Malformed,
                            },
                        )?,
                    },
                }
            };
            out.insert(name, view);
        }
        Ok(RecordView { meta, fields: out })
    }

    crate::unscoped! {
        /// Updates fields of a record if it is still at `expected_version`; a stale version is
        /// refused and nothing changes.
        async fn update_record(
            &self,
            id: RecordId,
            expected_version: u64,
            changes: &BTreeMap<FieldName, FieldChange>,
        ) -> Result<RecordMeta, VaultError> {
            self.update_record_for(id, expected_version, changes, Vec::new())
                .await
        }
    }

    /// `update_record` with the audit entries to commit in the update's own transaction: an
    /// update is never stored without its entry, nor its entry without the update.
    pub(crate) async fn update_record_for(
        &self,
        id: RecordId,
        expected_version: u64,
        changes: &BTreeMap<FieldName, FieldChange>,
        audit: Vec<AuditEvent>,
    ) -> Result<RecordMeta, VaultError> {
        if changes.is_empty() {
            return Err(VaultError::EmptyRecord);
        }
        let row = self.record_row(id).await?;
        let mut meta = row.meta()?;
        if meta.version != expected_version {
            return Err(VaultError::StaleVersion {
                record: id,
                expected: expected_version,
                current: meta.version,
            });
        }
        let checked = self.check_fields(
            &meta.record_type,
            changes.iter().map(|(n, c)| {
                (
                    n,
                    match c {
                        FieldChange::Set(v) => Some(v),
                        FieldChange::Remove => None,
                    },
                )
            }),
        )?;
        let sets: Vec<(&FieldName, Category, &FieldValue)> = checked
            .iter()
            .zip(changes.values())
            .filter_map(|((n, c), ch)| match ch {
                FieldChange::Set(v) => Some((*n, c.clone(), v)),
                FieldChange::Remove => None,
            })
            .collect();
        let cats: BTreeSet<Category> = sets.iter().map(|(_, c, _)| c.clone()).collect();
        self.refresh_keyring().await?;
        let mut keys = self.unwrap_all(id, &cats).await?;
        let rows = self.seal_rows(&mut keys, id, &sets)?;
        let new_deks = keys.take_new();
        self.insert_deks(id, &new_deks).await?;

        let now = self.clock.now();
        let result = async {
            let txn = crate::store::begin(&self.stores.data)
                .await
                .map_err(StoreError::data)?;
            let next = i64::try_from(expected_version + 1)
                .map_err(|_| VaultError::CorruptRow("record version"))?;
            let updated = records::bump_version(&txn, id, next, now).await?;
            if updated != 1 {
                txn.rollback().await.map_err(StoreError::data)?;
                let current = self.record_row(id).await?;
                return Err(VaultError::StaleVersion {
                    record: id,
                    expected: expected_version,
                    current: u64::try_from(current.version).unwrap_or(0),
                });
            }
            let names: Vec<String> = changes.keys().map(|n| n.as_str().to_owned()).collect();
            records::replace_fields(&txn, id, names, rows).await?;
            self.audit()
                .chain()
                .append_in(&txn, &audit)
                .await
                .map_err(StoreError::data)?;
            txn.commit().await.map_err(StoreError::data)?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.remove_deks(&new_deks).await;
            return Err(e);
        }
        meta.version = expected_version + 1;
        meta.updated_at = now;
        Ok(meta)
    }

    crate::unscoped! {
        /// Crypto-shreds a record: its DEKs are destroyed, so its fields can never be opened again,
        /// and the ciphertext is deleted too. The record row stays as a tombstone.
        async fn shred_record(&self, id: RecordId) -> Result<ShredReceipt, VaultError> {
            self.shred_record_for(id, |_| Vec::new()).await
        }
    }

    /// `shred_record` with the certificate to commit in the transaction that deletes the
    /// ciphertext: a shred that completed is always certified in the audit log.
    pub(crate) async fn shred_record_for(
        &self,
        id: RecordId,
        audit: impl FnOnce(&ShredReceipt) -> Vec<AuditEvent>,
    ) -> Result<ShredReceipt, VaultError> {
        let row = records::find(&self.stores.data, id)
            .await?
            .ok_or(VaultError::RecordNotFound(id))?;
        if row.is_shredded() {
            return Err(VaultError::RecordShredded(id));
        }
        records::mark_shredding(&self.stores.data, id, self.clock.now()).await?;
        self.finish_shred(id, audit).await
    }

    /// Destroys the DEKs and deletes the ciphertext of a record marked `shredding`.
    async fn finish_shred(
        &self,
        id: RecordId,
        audit: impl FnOnce(&ShredReceipt) -> Vec<AuditEvent>,
    ) -> Result<ShredReceipt, VaultError> {
        let key = id.to_string();
        let held = deks::of_record(&self.stores.keys, id).await?;
        let mut categories: Vec<Category> = held.iter().filter_map(DekRow::category).collect();
        let destroyed = deks::delete_of_record(&self.stores.keys, id).await?;
        crate::crash::point("shred.keys_destroyed");

        let txn = crate::store::begin(&self.stores.data)
            .await
            .map_err(StoreError::data)?;
        let fields = records::fields(&txn, id).await?;
        for f in &fields {
            if let Some(c) = f.category()
                && !categories.contains(&c)
            {
                categories.push(c);
            }
        }
        let deleted = records::delete_fields(&txn, id).await?;
        records::mark_shredded(&txn, id, self.clock.now()).await?;
        // Every shred is in the shred log, so a restore of an older backup re-applies it.
        retention::log_shred(
            &txn,
            Shred {
                record: key,
                categories: categories.clone(),
                rule: "whole record".into(),
                at: self.clock.now(),
            },
        )
        .await?;
        categories.sort();
        let receipt = ShredReceipt {
            record: id,
            categories,
            deks_destroyed: destroyed,
            fields_deleted: deleted,
        };
        self.audit()
            .chain()
            .append_in(&txn, &audit(&receipt))
            .await
            .map_err(StoreError::data)?;
        txn.commit().await.map_err(StoreError::data)?;
        Ok(receipt)
    }

    /// Completes every shred that a crash interrupted.
    async fn resume_shreds(&self) -> Result<(), VaultError> {
        let pending = records::shredding(&self.stores.data).await?;
        for r in pending {
            let id = r.record_id()?;
            tracing::info!(record = %id, "finishing an interrupted shred");
            // Whoever asked for the shred was never answered; the certificate names the vault.
            let school = r.school()?;
            let subject = r.subject()?;
            self.finish_shred(id, |receipt| {
                let mut ev = AuditEvent::new("vault", "record.shred", Outcome::Done);
                ev.school = Some(school);
                ev.subject = Some(subject);
                ev.record = Some(id);
                ev.categories = receipt.categories.clone();
                ev.reason = Some(format!(
                    "shred certificate: finished after an interruption; {} keys destroyed, {} fields deleted",
                    receipt.deks_destroyed, receipt.fields_deleted
                ));
                vec![ev]
            })
            .await?;
        }
        Ok(())
    }

    crate::unscoped! {
        /// Counts the DEKs the key store holds for a record (for status and tests).
        async fn dek_count(&self, id: RecordId) -> Result<u64, VaultError> {
            Ok(deks::count_of_record(&self.stores.keys, id).await?)
        }
    }

    /// Every KEK and DEK the vault holds, in clear. Only for tests that scan stores for leaked
    /// key bytes; compiled only with the `test-hooks` feature, which a build of the server or vaultctl alone
    /// never enables.
    #[cfg(feature = "test-hooks")]
    pub async fn test_hooks_key_material(&self) -> Result<Vec<Vec<u8>>, VaultError> {
        let keyring = self.keyring();
        let mut out: Vec<Vec<u8>> = keyring.raw_keys();
        for r in deks::all(&self.stores.keys).await? {
            let (id, w) = r.into_wrapped()?;
            out.push(crate::keys::record_keys::test_hooks_unwrap(
                &keyring, id, &w,
            )?);
        }
        Ok(out)
    }
}
