//! The data store's consents and legal grounds: the legal basis of special categories.

use chrono::{DateTime, NaiveDate, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use crate::access::model::{Consent, ConsentGiver, ConsentId, LegalGround, PrincipalId};
use crate::domain::{Category, SubjectId};
use crate::error::VaultError;
use crate::store::codec::{categories_list, corrupt, parse_categories, split_list};
use crate::store::entities::{consent, legal_ground};
use crate::store::{Db, StoreError};

/// A stored consent row, as the legal basis weighs it.
pub(crate) type ConsentRow = consent::Model;
/// A stored legal ground row.
pub(crate) type GroundRow = legal_ground::Model;

impl ConsentRow {
    /// Whether the consent's list names the category.
    pub(crate) fn lists(&self, category: &Category) -> bool {
        split_list(&self.categories).any(|x| x == category.as_str())
    }
}

impl GroundRow {
    pub(crate) fn is_for(&self, category: &Category) -> bool {
        self.category == category.as_str()
    }
}

/// Who gave a consent, as stored: `guardian` (with the guardian's id), `subject`, or
/// `subject_adult` when the operator confirmed the subject is an adult.
fn giver_columns(g: &ConsentGiver) -> (&'static str, Option<String>) {
    match g {
        ConsentGiver::Guardian(g) => ("guardian", Some(g.to_string())),
        ConsentGiver::Subject { confirmed_adult } => (
            if *confirmed_adult {
                "subject_adult"
            } else {
                "subject"
            },
            None,
        ),
    }
}

fn decode(m: ConsentRow) -> Result<Consent, VaultError> {
    let given_by = match (m.given_by.as_str(), m.guardian_id.as_deref()) {
        ("guardian", Some(g)) => {
            ConsentGiver::Guardian(corrupt(SubjectId::parse(g), "guardian id")?)
        }
        ("subject", _) => ConsentGiver::Subject {
            confirmed_adult: false,
        },
        ("subject_adult", _) => ConsentGiver::Subject {
            confirmed_adult: true,
        },
        _ => return Err(VaultError::CorruptRow("consent giver")),
    };
    Ok(Consent {
        id: corrupt(ConsentId::parse(&m.id), "consent id")?,
        subject: corrupt(SubjectId::parse(&m.subject_id), "subject id")?,
        operator: m.operator,
        operator_bin: m.operator_bin,
        given_by,
        method: m.method,
        evidence_ref: m.evidence_ref,
        text_version: m.text_version,
        categories: parse_categories(&m.categories)?,
        third_party: m.third_party,
        cross_border: m.cross_border,
        publication: m.publication,
        given_at: m.given_at,
        term_until: m.term_until,
        withdrawn_at: m.withdrawn_at,
        withdrawal_deadline: m.withdrawal_deadline,
        refusal_reason: m.refusal_reason,
    })
}

/// Every consent of a subject, and its grounds not ended.
pub(crate) async fn basis(
    db: &Db,
    subject: SubjectId,
) -> Result<(Vec<ConsentRow>, Vec<GroundRow>), StoreError> {
    let consents = consent::Entity::find()
        .filter(consent::Column::SubjectId.eq(subject.to_string()))
        .all(db)
        .await
        .map_err(StoreError::data)?;
    let grounds = legal_ground::Entity::find()
        .filter(legal_ground::Column::SubjectId.eq(subject.to_string()))
        .filter(legal_ground::Column::EndedAt.is_null())
        .all(db)
        .await
        .map_err(StoreError::data)?;
    Ok((consents, grounds))
}

/// Stores a new consent, recorded by `recorded_by`.
pub(crate) async fn insert(
    db: &Db,
    c: &Consent,
    recorded_by: PrincipalId,
) -> Result<(), StoreError> {
    let (given_by, guardian) = giver_columns(&c.given_by);
    consent::Entity::insert(consent::ActiveModel {
        id: Set(c.id.to_string()),
        subject_id: Set(c.subject.to_string()),
        operator: Set(c.operator.clone()),
        operator_bin: Set(c.operator_bin.clone()),
        given_by: Set(given_by.into()),
        guardian_id: Set(guardian),
        method: Set(c.method.clone()),
        evidence_ref: Set(c.evidence_ref.clone()),
        text_version: Set(c.text_version.clone()),
        categories: Set(categories_list(&c.categories)),
        third_party: Set(c.third_party),
        cross_border: Set(c.cross_border),
        publication: Set(c.publication),
        given_at: Set(c.given_at),
        term_until: Set(c.term_until),
        recorded_by: Set(recorded_by.to_string()),
        withdrawn_at: Set(c.withdrawn_at),
        withdrawal_deadline: Set(c.withdrawal_deadline),
        refusal_reason: Set(c.refusal_reason.clone()),
    })
    .exec_without_returning(db)
    .await
    .map_err(StoreError::data)?;
    Ok(())
}

/// A consent by id.
pub(crate) async fn get(db: &Db, id: ConsentId) -> Result<Option<Consent>, VaultError> {
    consent::Entity::find_by_id(id.to_string())
        .one(db)
        .await
        .map_err(StoreError::data)?
        .map(decode)
        .transpose()
}

/// A subject's consents, in the order they were given.
pub(crate) async fn of_subject(db: &Db, subject: SubjectId) -> Result<Vec<Consent>, VaultError> {
    consent::Entity::find()
        .filter(consent::Column::SubjectId.eq(subject.to_string()))
        .order_by_asc(consent::Column::GivenAt)
        .all(db)
        .await
        .map_err(StoreError::data)?
        .into_iter()
        .map(decode)
        .collect()
}

/// Records a consent's withdrawal, its deadline, and a refusal to stop if there is one.
pub(crate) async fn withdraw(
    db: &Db,
    id: ConsentId,
    at: DateTime<Utc>,
    deadline: NaiveDate,
    refusal: Option<String>,
) -> Result<(), StoreError> {
    consent::Entity::update_many()
        .col_expr(consent::Column::WithdrawnAt, Expr::value(at))
        .col_expr(consent::Column::WithdrawalDeadline, Expr::value(deadline))
        .col_expr(consent::Column::RefusalReason, Expr::value(refusal))
        .filter(consent::Column::Id.eq(id.to_string()))
        .exec(db)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}

/// Stores a legal ground other than consent for (subject, category).
pub(crate) async fn insert_ground(
    db: &Db,
    subject: SubjectId,
    category: &Category,
    ground: LegalGround,
    reference: String,
    recorded_by: PrincipalId,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    legal_ground::Entity::insert(legal_ground::ActiveModel {
        id: Set(uuid::Uuid::new_v4().to_string()),
        subject_id: Set(subject.to_string()),
        category: Set(category.as_str().to_owned()),
        ground: Set(ground.as_str().to_owned()),
        reference: Set(reference),
        recorded_by: Set(recorded_by.to_string()),
        recorded_at: Set(at),
        ended_at: Set(None),
    })
    .exec_without_returning(db)
    .await
    .map_err(StoreError::data)?;
    Ok(())
}
