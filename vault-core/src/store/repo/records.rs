//! The data store's records and their sealed fields. A record's state is `active`, `shredding`
//! (a shred began) or `shredded` (its tombstone); fields hold only ciphertext.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, JoinType, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Related,
};

use crate::domain::{Category, FieldName, RecordId, RecordType, SchoolId, SubjectId};
use crate::error::VaultError;
use crate::keys::envelope::WrappedDek;
use crate::records::vault::RecordMeta;
use crate::store::codec::{STATE_ACTIVE, STATE_SHREDDED, STATE_SHREDDING, corrupt};
use crate::store::entities::{dek, record, record_field, subject};
use crate::store::repo::subjects::SubjectRow;
use crate::store::{Db, DbErr, StoreError, Txn};

/// A stored record row.
pub(crate) type RecordRow = record::Model;
/// A stored field row: a record's sealed value of one field.
pub(crate) type FieldRow = record_field::Model;

impl RecordRow {
    pub(crate) fn record_id(&self) -> Result<RecordId, VaultError> {
        corrupt(RecordId::parse(&self.id), "record id")
    }

    pub(crate) fn school(&self) -> Result<SchoolId, VaultError> {
        corrupt(SchoolId::parse(&self.school_id), "school id")
    }

    pub(crate) fn subject(&self) -> Result<SubjectId, VaultError> {
        corrupt(SubjectId::parse(&self.subject_id), "subject id")
    }

    /// The record's metadata.
    pub(crate) fn meta(&self) -> Result<RecordMeta, VaultError> {
        Ok(RecordMeta {
            id: self.record_id()?,
            subject: self.subject()?,
            school: self.school()?,
            record_type: corrupt(RecordType::parse(&self.record_type), "record type")?,
            version: u64::try_from(self.version)
                .map_err(|_| VaultError::CorruptRow("record version"))?,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }

    /// Whether it still holds data.
    pub(crate) fn is_active(&self) -> bool {
        self.state == STATE_ACTIVE
    }

    pub(crate) fn is_shredded(&self) -> bool {
        self.state == STATE_SHREDDED
    }
}

impl FieldRow {
    /// The field's category, if it parses.
    pub(crate) fn category(&self) -> Option<Category> {
        Category::parse(&self.category).ok()
    }

    /// The field's name and category.
    pub(crate) fn name_and_category(&self) -> Result<(FieldName, Category), VaultError> {
        Ok((
            corrupt(FieldName::parse(&self.field), "field name")?,
            corrupt(Category::parse(&self.category), "field category")?,
        ))
    }
}

/// One sealed field, ready to store.
pub(crate) struct NewField(record_field::ActiveModel);

impl NewField {
    pub(crate) fn new(
        record: RecordId,
        field: &FieldName,
        category: &Category,
        ciphertext: Vec<u8>,
    ) -> Self {
        NewField(record_field::ActiveModel {
            record_id: Set(record.to_string()),
            field: Set(field.as_str().to_owned()),
            category: Set(category.as_str().to_owned()),
            ciphertext: Set(ciphertext),
        })
    }
}

/// The rows of one new record: its DEKs (key store), the record and its fields (data store).
pub(crate) struct NewRows {
    deks: Vec<dek::ActiveModel>,
    record: record::ActiveModel,
    fields: Vec<record_field::ActiveModel>,
}

impl NewRows {
    /// The rows of a new record at version 1, sealed with `deks`.
    pub(crate) fn new(meta: &RecordMeta, deks: &[WrappedDek], fields: Vec<NewField>) -> Self {
        NewRows {
            deks: super::deks::rows(meta.id, deks, meta.created_at),
            record: record::ActiveModel {
                id: Set(meta.id.to_string()),
                subject_id: Set(meta.subject.to_string()),
                school_id: Set(meta.school.as_str().to_owned()),
                record_type: Set(meta.record_type.as_str().to_owned()),
                version: Set(1),
                state: Set(STATE_ACTIVE.into()),
                created_at: Set(meta.created_at),
                updated_at: Set(meta.updated_at),
            },
            fields: fields.into_iter().map(|f| f.0).collect(),
        }
    }
}

/// The rows of a batch of new records, committed together: DEKs first, then the rest.
pub(crate) struct BatchRows {
    deks: Vec<dek::ActiveModel>,
    records: Vec<record::ActiveModel>,
    fields: Vec<record_field::ActiveModel>,
}

impl BatchRows {
    pub(crate) fn of(recs: &[&NewRows]) -> Self {
        BatchRows {
            deks: recs.iter().flat_map(|r| r.deks.clone()).collect(),
            records: recs.iter().map(|r| r.record.clone()).collect(),
            fields: recs.iter().flat_map(|r| r.fields.clone()).collect(),
        }
    }

    /// The ids of the batch's DEKs, to remove them again if the data write fails.
    pub(crate) fn dek_ids(&self) -> Vec<String> {
        super::deks::ids(&self.deks)
    }

    /// Inserts the batch's DEKs inside a key-store transaction.
    pub(crate) async fn insert_deks(&mut self, txn: &Txn) -> Result<(), DbErr> {
        super::deks::insert_rows(txn, std::mem::take(&mut self.deks)).await
    }

    /// Inserts the batch's records and fields inside a data-store transaction.
    pub(crate) async fn insert_records(self, txn: &Txn) -> Result<(), DbErr> {
        super::insert_chunks(txn, self.records).await?;
        super::insert_chunks(txn, self.fields).await
    }
}

/// A record in any state.
pub(crate) async fn find(db: &Db, id: RecordId) -> Result<Option<RecordRow>, StoreError> {
    record::Entity::find_by_id(id.to_string())
        .one(db)
        .await
        .map_err(StoreError::data)
}

/// The ids of a subject's records that still hold data.
pub(crate) async fn active_ids_of(
    db: &Db,
    subject: SubjectId,
) -> Result<Vec<RecordId>, VaultError> {
    record::Entity::find()
        .filter(record::Column::SubjectId.eq(subject.to_string()))
        .filter(record::Column::State.eq(STATE_ACTIVE))
        .all(db)
        .await
        .map_err(StoreError::data)?
        .iter()
        .map(RecordRow::record_id)
        .collect()
}

/// The categories a record holds fields in.
pub(crate) async fn field_categories(
    db: &Db,
    id: RecordId,
) -> Result<BTreeSet<Category>, StoreError> {
    Ok(fields(db, id)
        .await?
        .iter()
        .filter_map(FieldRow::category)
        .collect())
}

/// A record's sealed field rows.
pub(crate) async fn fields(
    db: &impl ConnectionTrait,
    id: RecordId,
) -> Result<Vec<FieldRow>, StoreError> {
    record_field::Entity::find()
        .filter(record_field::Column::RecordId.eq(id.to_string()))
        .all(db)
        .await
        .map_err(StoreError::data)
}

/// Each field row of a record with the record and its subject, in one query.
pub(crate) async fn fields_with_record(
    db: &Db,
    id: RecordId,
) -> Result<Vec<(FieldRow, Option<RecordRow>, Option<SubjectRow>)>, StoreError> {
    record_field::Entity::find()
        .filter(record_field::Column::RecordId.eq(id.to_string()))
        .find_also_related(record::Entity)
        .and_also_related(subject::Entity)
        .all(db)
        .await
        .map_err(StoreError::data)
}

/// Marks a record `shredding`: the first step of a shred.
pub(crate) async fn mark_shredding(
    db: &Db,
    id: RecordId,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    record::Entity::update_many()
        .col_expr(record::Column::State, Expr::value(STATE_SHREDDING))
        .col_expr(record::Column::UpdatedAt, Expr::value(now))
        .filter(record::Column::Id.eq(id.to_string()))
        .exec(db)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}

/// Moves a live record from version `next - 1` to `next`; answers the rows changed (0: the
/// record is at another version, or no longer active).
pub(crate) async fn bump_version(
    txn: &Txn,
    id: RecordId,
    next: i64,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(record::Entity::update_many()
        .col_expr(record::Column::Version, Expr::value(next))
        .col_expr(record::Column::UpdatedAt, Expr::value(now))
        .filter(record::Column::Id.eq(id.to_string()))
        .filter(record::Column::Version.eq(next - 1))
        .filter(record::Column::State.eq(STATE_ACTIVE))
        .exec(txn)
        .await
        .map_err(StoreError::data)?
        .rows_affected)
}

/// Deletes the named fields of a record and inserts the new rows.
pub(crate) async fn replace_fields(
    txn: &Txn,
    id: RecordId,
    names: Vec<String>,
    rows: Vec<NewField>,
) -> Result<(), StoreError> {
    record_field::Entity::delete_many()
        .filter(record_field::Column::RecordId.eq(id.to_string()))
        .filter(record_field::Column::Field.is_in(names))
        .exec(txn)
        .await
        .map_err(StoreError::data)?;
    if !rows.is_empty() {
        record_field::Entity::insert_many(rows.into_iter().map(|r| r.0))
            .exec_without_returning(txn)
            .await
            .map_err(StoreError::data)?;
    }
    Ok(())
}

/// Deletes every field of a record; answers how many.
pub(crate) async fn delete_fields(txn: &Txn, id: RecordId) -> Result<u64, StoreError> {
    Ok(record_field::Entity::delete_many()
        .filter(record_field::Column::RecordId.eq(id.to_string()))
        .exec(txn)
        .await
        .map_err(StoreError::data)?
        .rows_affected)
}

/// Marks a record `shredded`: its tombstone.
pub(crate) async fn mark_shredded(
    txn: &Txn,
    id: RecordId,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    record::Entity::update_many()
        .col_expr(record::Column::State, Expr::value(STATE_SHREDDED))
        .col_expr(record::Column::UpdatedAt, Expr::value(now))
        .filter(record::Column::Id.eq(id.to_string()))
        .exec(txn)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}

/// Marks records `shredded`.
pub(crate) async fn mark_shredded_all(
    txn: &Txn,
    ids: Vec<String>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    record::Entity::update_many()
        .col_expr(record::Column::State, Expr::value(STATE_SHREDDED))
        .col_expr(record::Column::UpdatedAt, Expr::value(now))
        .filter(record::Column::Id.is_in(ids))
        .exec(txn)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}

/// Records whose shred a crash interrupted.
pub(crate) async fn shredding(db: &Db) -> Result<Vec<RecordRow>, StoreError> {
    record::Entity::find()
        .filter(record::Column::State.eq(STATE_SHREDDING))
        .all(db)
        .await
        .map_err(StoreError::data)
}

/// How many records hold data.
pub(crate) async fn count_active(db: &Db) -> Result<u64, StoreError> {
    record::Entity::find()
        .filter(record::Column::State.eq(STATE_ACTIVE))
        .count(db)
        .await
        .map_err(StoreError::data)
}

/// The ids of up to `limit` active records after `after`, in id order.
pub(crate) async fn active_ids_page(
    db: &Db,
    after: Option<&str>,
    limit: u64,
) -> Result<Vec<String>, StoreError> {
    let mut q = record::Entity::find()
        .select_only()
        .column(record::Column::Id)
        .filter(record::Column::State.eq(STATE_ACTIVE))
        .order_by_asc(record::Column::Id)
        .limit(limit);
    if let Some(after) = after {
        q = q.filter(record::Column::Id.gt(after.to_owned()));
    }
    q.into_tuple().all(db).await.map_err(StoreError::data)
}

/// What a retention rule needs of one (record, category): record id, category, subject id,
/// record created, school id, subject left.
pub(crate) type PlanRow = (
    String,
    String,
    String,
    DateTime<Utc>,
    String,
    Option<DateTime<Utc>>,
);

/// The distinct (record, category) of the active records in (`after`, `last`], with what the
/// rules need, in one query over that id range (an index range, not a list of ids) with only
/// the columns the rules need.
pub(crate) async fn plan_rows(
    db: &Db,
    after: Option<&str>,
    last: &str,
) -> Result<Vec<PlanRow>, StoreError> {
    let mut q = record_field::Entity::find()
        .select_only()
        .column(record_field::Column::RecordId)
        .column(record_field::Column::Category)
        .column(record::Column::SubjectId)
        .column(record::Column::CreatedAt)
        .column(subject::Column::SchoolId)
        .column(subject::Column::LeftAt)
        .distinct()
        .inner_join(record::Entity)
        .join(
            JoinType::InnerJoin,
            <record::Entity as Related<subject::Entity>>::to(),
        )
        .filter(record::Column::State.eq(STATE_ACTIVE))
        .filter(record::Column::Id.lte(last.to_owned()));
    if let Some(after) = after {
        q = q.filter(record::Column::Id.gt(after.to_owned()));
    }
    q.into_tuple().all(db).await.map_err(StoreError::data)
}

/// (record, category) of every field of the given records.
pub(crate) async fn field_pairs(
    txn: &Txn,
    ids: Vec<String>,
) -> Result<Vec<(String, String)>, StoreError> {
    record_field::Entity::find()
        .select_only()
        .column(record_field::Column::RecordId)
        .column(record_field::Column::Category)
        .filter(record_field::Column::RecordId.is_in(ids))
        .into_tuple()
        .all(txn)
        .await
        .map_err(StoreError::data)
}

/// For each group, deletes the fields of its records in its categories.
pub(crate) async fn delete_field_groups(
    txn: &Txn,
    groups: &BTreeMap<&BTreeSet<String>, Vec<String>>,
) -> Result<(), StoreError> {
    for (cats, rids) in groups {
        record_field::Entity::delete_many()
            .filter(record_field::Column::RecordId.is_in(rids.iter().cloned()))
            .filter(record_field::Column::Category.is_in(cats.iter().cloned()))
            .exec(txn)
            .await
            .map_err(StoreError::data)?;
    }
    Ok(())
}

/// Which of the given record ids the data store holds, in any state.
pub(crate) async fn existing_ids(
    db: &Db,
    ids: BTreeSet<&str>,
) -> Result<BTreeSet<String>, StoreError> {
    Ok(record::Entity::find()
        .select_only()
        .column(record::Column::Id)
        .filter(record::Column::Id.is_in(ids.iter().copied()))
        .into_tuple()
        .all(db)
        .await
        .map_err(StoreError::data)?
        .into_iter()
        .collect())
}

/// Deletes a record's fields of the given categories, inside a restore's transaction.
pub(crate) async fn delete_field_categories(
    txn: &Txn,
    record: &str,
    categories: Vec<String>,
) -> Result<(), StoreError> {
    record_field::Entity::delete_many()
        .filter(record_field::Column::RecordId.eq(record.to_owned()))
        .filter(record_field::Column::Category.is_in(categories))
        .exec(txn)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}

/// How many fields a record has left.
pub(crate) async fn count_fields(txn: &Txn, record: &str) -> Result<u64, StoreError> {
    record_field::Entity::find()
        .filter(record_field::Column::RecordId.eq(record.to_owned()))
        .count(txn)
        .await
        .map_err(StoreError::data)
}

/// Sets a record's state to `shredded`, leaving its times as they are (a restore's replay).
pub(crate) async fn set_shredded(txn: &Txn, record: &str) -> Result<(), StoreError> {
    record::Entity::update_many()
        .col_expr(record::Column::State, Expr::value(STATE_SHREDDED))
        .filter(record::Column::Id.eq(record.to_owned()))
        .exec(txn)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}
