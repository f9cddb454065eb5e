//! The data store's disclosure ledger and the recorded Art. 16(3) transfer grounds.

use chrono::{DateTime, NaiveDate, Utc};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use crate::access::transfer::Disclosure;
use crate::domain::{Category, Purpose, SubjectId};
use crate::store::codec::{categories_list, split_list};
use crate::store::entities::{disclosure, transfer_ground};
use crate::store::{Db, StoreError};

/// Stores a transfer ground for (subject, country).
pub(crate) async fn insert_ground(
    db: &Db,
    subject: SubjectId,
    country: &str,
    ground: &str,
    reference: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    transfer_ground::Entity::insert(transfer_ground::ActiveModel {
        id: Set(uuid::Uuid::new_v4().to_string()),
        subject_id: Set(subject.to_string()),
        country: Set(country.to_owned()),
        ground: Set(ground.to_owned()),
        reference: Set(reference.to_owned()),
        recorded_at: Set(at),
    })
    .exec_without_returning(db)
    .await
    .map_err(StoreError::data)?;
    Ok(())
}

/// A recorded ground (ground, reference) for transfers of a subject's data to a country.
pub(crate) async fn ground_for(
    db: &Db,
    subject: SubjectId,
    country: &str,
) -> Result<Option<(String, String)>, StoreError> {
    Ok(transfer_ground::Entity::find()
        .filter(transfer_ground::Column::SubjectId.eq(subject.to_string()))
        .filter(transfer_ground::Column::Country.eq(country))
        .one(db)
        .await
        .map_err(StoreError::data)?
        .map(|g| (g.ground, g.reference)))
}

/// One disclosure for the ledger.
pub(crate) struct NewDisclosure<'a> {
    pub subject: SubjectId,
    pub recipient: &'a str,
    pub country: &'a str,
    pub categories: &'a [Category],
    pub purpose: &'a Purpose,
    pub basis: String,
    pub at: DateTime<Utc>,
    pub notify_by: Option<NaiveDate>,
}

/// Appends a disclosure to the subject's ledger.
pub(crate) async fn insert_disclosure(db: &Db, d: NewDisclosure<'_>) -> Result<(), StoreError> {
    disclosure::Entity::insert(disclosure::ActiveModel {
        id: Set(uuid::Uuid::new_v4().to_string()),
        subject_id: Set(d.subject.to_string()),
        recipient: Set(d.recipient.to_owned()),
        country: Set(d.country.to_owned()),
        categories: Set(categories_list(d.categories)),
        purpose: Set(d.purpose.as_str().to_owned()),
        basis: Set(d.basis),
        at: Set(d.at),
        notify_by: Set(d.notify_by),
    })
    .exec_without_returning(db)
    .await
    .map_err(StoreError::data)?;
    Ok(())
}

/// A subject's disclosure ledger, oldest first.
pub(crate) async fn disclosures(
    db: &Db,
    subject: SubjectId,
) -> Result<Vec<Disclosure>, StoreError> {
    Ok(disclosure::Entity::find()
        .filter(disclosure::Column::SubjectId.eq(subject.to_string()))
        .order_by_asc(disclosure::Column::At)
        .all(db)
        .await
        .map_err(StoreError::data)?
        .into_iter()
        .map(|d| Disclosure {
            recipient: d.recipient,
            country: d.country,
            categories: split_list(&d.categories).map(str::to_owned).collect(),
            purpose: d.purpose,
            basis: d.basis,
            at: d.at,
            notify_by: d.notify_by,
        })
        .collect())
}
