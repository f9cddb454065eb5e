//! The vault core end to end on real stores: SQLite files and PostgreSQL databases, real
//! AES-GCM, real age. Every scenario runs on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::json;
use vault_core::{
    Catalog, Category, FieldChange, FieldName, FieldValue, FieldView, Iin, KeyringError,
    NewSubject, RecordType, SchoolId, SealReason, SubjectId, SubjectKind, Unlock, Vault,
    VaultError,
};
use vault_tests::{
    Backend, TestVault, catalog, contains, full_record, hex, make_iin, on_both_backends,
};

on_both_backends!(
    full_records_round_trip,
    moved_ciphertext_fails_to_open,
    flipped_bits_fail_to_open,
    stores_hold_no_plaintext_and_no_keys_in_data_store,
    catalog_refuses_unknown_fields,
    stale_update_is_refused_and_changes_nothing,
    shredded_record_is_gone_with_its_deks,
    interrupted_shred_is_finished_on_open,
    failed_data_write_leaves_no_deks,
    concurrent_writes_land_together_and_a_bad_one_fails_alone,
    a_write_after_a_rotation_elsewhere_is_sealed_under_the_new_kek,
    subjects_found_by_iin_blind_index,
    sealed_fields_name_category_and_reason,
    migrations_go_down_and_up,
    orphan_deks_are_collected_and_nothing_else,
);

fn all_categories(c: &Catalog) -> BTreeSet<Category> {
    c.collected_categories().cloned().collect()
}

fn name(s: &str) -> FieldName {
    FieldName::parse(s).unwrap()
}

async fn subject(t: &TestVault, kind: SubjectKind, iin: Option<&str>) -> SubjectId {
    t.vault
        .create_subject(NewSubject {
            school: SchoolId::parse("school-1").unwrap(),
            kind,
            iin: iin.map(|i| Iin::parse(i).unwrap()),
        })
        .await
        .unwrap()
        .id
}

fn sql(b: DbBackend, s: &str, values: Vec<sea_orm::Value>) -> Statement {
    // The tests write `$1` placeholders; SQLite takes `?`.
    let s = if b == DbBackend::Sqlite {
        let mut out = s.to_owned();
        for i in (1..=values.len()).rev() {
            out = out.replace(&format!("${i}"), "?");
        }
        out
    } else {
        s.to_owned()
    };
    Statement::from_sql_and_values(b, s, values)
}

async fn field_ct(t: &TestVault, record: &str, field: &str) -> Vec<u8> {
    let db = t.stores.raw_data().await;
    let row = db
        .query_one_raw(sql(
            db.get_database_backend(),
            "SELECT ciphertext FROM record_fields WHERE record_id = $1 AND field = $2",
            vec![record.into(), field.into()],
        ))
        .await
        .unwrap()
        .expect("field row");
    row.try_get::<Vec<u8>>("", "ciphertext").unwrap()
}

async fn set_field_ct(t: &TestVault, record: &str, field: &str, ct: Vec<u8>) {
    let db = t.stores.raw_data().await;
    let r = db
        .execute_raw(sql(
            db.get_database_backend(),
            "UPDATE record_fields SET ciphertext = $1 WHERE record_id = $2 AND field = $3",
            vec![ct.into(), record.into(), field.into()],
        ))
        .await
        .unwrap();
    assert_eq!(r.rows_affected(), 1);
}

async fn full_records_round_trip(backend: Backend) {
    let t = TestVault::new(backend).await;
    let cat = catalog();
    for (kind, rt, born) in [
        (SubjectKind::Student, "student", ("120315", 5)),
        (SubjectKind::Staff, "staff", ("850704", 4)),
        (SubjectKind::Guardian, "guardian", ("800101", 3)),
    ] {
        let iin = make_iin(born.0, born.1);
        let s = subject(&t, kind, Some(&iin)).await;
        let (fields, _) = full_record(&cat, rt, &iin);
        let n = cat
            .record_type(&RecordType::parse(rt).unwrap())
            .unwrap()
            .fields()
            .count();
        assert_eq!(fields.len(), n, "every catalog field of {rt} is written");
        let meta = t
            .vault
            .write_record(s, &RecordType::parse(rt).unwrap(), &fields)
            .await
            .unwrap();
        assert_eq!(meta.version, 1);
        let view = t
            .vault
            .read_record(meta.id, &all_categories(&cat))
            .await
            .unwrap();
        assert_eq!(view.fields.len(), fields.len());
        for (name, value) in &fields {
            match &view.fields[name] {
                FieldView::Open { value: got, .. } => assert_eq!(got, value, "{rt}.{name}"),
                other => panic!("{rt}.{name} came back {other:?}"),
            }
        }
    }
}

async fn moved_ciphertext_fails_to_open(backend: Backend) {
    let t = TestVault::new(backend).await;
    let cat = catalog();
    let rt = RecordType::parse("student").unwrap();
    let s = subject(&t, SubjectKind::Student, None).await;
    let mk = |pairs: &[(&str, &str)]| -> BTreeMap<FieldName, FieldValue> {
        pairs
            .iter()
            .map(|(k, v)| (name(k), FieldValue::text(v)))
            .collect()
    };
    let fields = mk(&[
        ("full_name", "A"),
        ("address", "B"),
        ("health_issues", "asthma"),
        ("special_educational_needs", "none"),
    ]);
    let a = t.vault.write_record(s, &rt, &fields).await.unwrap().id;
    let b = t.vault.write_record(s, &rt, &fields).await.unwrap().id;
    let all = all_categories(&cat);
    let (a_s, b_s) = (a.to_string(), b.to_string());

    // To another record, same field.
    let ct = field_ct(&t, &a_s, "health_issues").await;
    set_field_ct(&t, &b_s, "health_issues", ct).await;
    let err = t.vault.read_record(b, &all).await.unwrap_err();
    assert!(
        matches!(&err, VaultError::FieldTampered { field, .. } if field.as_str() == "health_issues"),
        "{err:?}"
    );

    // To another field of the same record and category.
    let a2 = t.vault.write_record(s, &rt, &fields).await.unwrap().id;
    let ct = field_ct(&t, &a2.to_string(), "health_issues").await;
    set_field_ct(&t, &a2.to_string(), "special_educational_needs", ct).await;
    assert!(matches!(
        t.vault.read_record(a2, &all).await.unwrap_err(),
        VaultError::FieldTampered { .. }
    ));

    // To a field of another category in the same record (health -> contact).
    let a3 = t.vault.write_record(s, &rt, &fields).await.unwrap().id;
    let ct = field_ct(&t, &a3.to_string(), "health_issues").await;
    set_field_ct(&t, &a3.to_string(), "address", ct).await;
    assert!(matches!(
        t.vault.read_record(a3, &all).await.unwrap_err(),
        VaultError::FieldTampered { .. }
    ));
    // Relabelling the row's category does not help either: the DEK and AAD differ.
    let db = t.stores.raw_data().await;
    db.execute_raw(sql(
        db.get_database_backend(),
        "UPDATE record_fields SET category = 'health' WHERE record_id = $1 AND field = 'address'",
        vec![a3.to_string().into()],
    ))
    .await
    .unwrap();
    assert!(t.vault.read_record(a3, &all).await.is_err());

    // The untouched record still opens.
    assert!(vault_tests::every_field_opens(
        &t.vault.read_record(a, &all).await.unwrap()
    ));
}

async fn flipped_bits_fail_to_open(backend: Backend) {
    let t = TestVault::new(backend).await;
    let cat = catalog();
    let all = all_categories(&cat);
    let rt = RecordType::parse("student").unwrap();
    let s = subject(&t, SubjectKind::Student, None).await;
    let fields: BTreeMap<_, _> = [(
        name("medical_data"),
        FieldValue::from_json(&json!({"x": 1})),
    )]
    .into_iter()
    .collect();
    let id = t.vault.write_record(s, &rt, &fields).await.unwrap().id;
    let ids = id.to_string();

    // Field ciphertext: format byte, nonce, body and tag.
    let good = field_ct(&t, &ids, "medical_data").await;
    for bit in [0, 7, 8, 100, good.len() * 8 - 9, good.len() * 8 - 1] {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        set_field_ct(&t, &ids, "medical_data", bad).await;
        let err = t.vault.read_record(id, &all).await.unwrap_err();
        assert!(
            matches!(err, VaultError::FieldTampered { .. }),
            "bit {bit}: {err:?}"
        );
    }
    set_field_ct(&t, &ids, "medical_data", good).await;
    assert!(vault_tests::every_field_opens(
        &t.vault.read_record(id, &all).await.unwrap()
    ));

    // Wrapped DEK in the key store.
    let keys = t.stores.raw_keys().await;
    let kb = keys.get_database_backend();
    let row = keys
        .query_one_raw(sql(
            kb,
            "SELECT wrapped FROM deks WHERE record_id = $1",
            vec![ids.clone().into()],
        ))
        .await
        .unwrap()
        .unwrap();
    let wrapped: Vec<u8> = row.try_get("", "wrapped").unwrap();
    for bit in [0, 9, 40, 200, wrapped.len() * 8 - 1] {
        let mut bad = wrapped.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        keys.execute_raw(sql(
            kb,
            "UPDATE deks SET wrapped = $1 WHERE record_id = $2",
            vec![bad.into(), ids.clone().into()],
        ))
        .await
        .unwrap();
        let err = t.vault.read_record(id, &all).await.unwrap_err();
        assert!(
            matches!(err, VaultError::DekTampered { .. }),
            "bit {bit}: {err:?}"
        );
    }
    keys.execute_raw(sql(
        kb,
        "UPDATE deks SET wrapped = $1 WHERE record_id = $2",
        vec![wrapped.into(), ids.clone().into()],
    ))
    .await
    .unwrap();
    assert!(vault_tests::every_field_opens(
        &t.vault.read_record(id, &all).await.unwrap()
    ));

    // The sealed keyring: a flipped bit anywhere stops the vault from opening. Its chain link
    // signs the SHA-256 of the sealed bytes, so it is refused before it is even unsealed.
    let row = keys
        .query_one_raw(sql(kb, "SELECT sealed FROM keyring WHERE id = 1", vec![]))
        .await
        .unwrap()
        .unwrap();
    let sealed: Vec<u8> = row.try_get("", "sealed").unwrap();
    for pos in [40, sealed.len() / 2, sealed.len() - 1] {
        let mut bad = sealed.clone();
        bad[pos] ^= 0x01;
        keys.execute_raw(sql(
            kb,
            "UPDATE keyring SET sealed = $1 WHERE id = 1",
            vec![bad.into()],
        ))
        .await
        .unwrap();
        let err = Vault::open(
            t.stores.open().await,
            vault_tests::policy().await,
            Unlock::identity_file(&t.identity).unwrap(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                VaultError::Keyring(KeyringError::Refused {
                    seen: 1,
                    problem: vault_core::ChainProblem::SealedMismatch { generation: 1 },
                })
            ),
            "byte {pos}: {err:?}"
        );
    }
    keys.execute_raw(sql(
        kb,
        "UPDATE keyring SET sealed = $1 WHERE id = 1",
        vec![sealed.into()],
    ))
    .await
    .unwrap();
    assert!(t.reopen().await.is_ok(), "the restored keyring opens again");
}

async fn stores_hold_no_plaintext_and_no_keys_in_data_store(backend: Backend) {
    let t = TestVault::new(backend).await;
    let cat = catalog();
    let mut markers = Vec::new();
    for (kind, rt, born) in [
        (SubjectKind::Student, "student", ("110905", 5)),
        (SubjectKind::Staff, "staff", ("790212", 3)),
    ] {
        let iin = make_iin(born.0, born.1);
        let s = subject(&t, kind, Some(&iin)).await;
        let (fields, m) = full_record(&cat, rt, &iin);
        markers.extend(m);
        let rt = RecordType::parse(rt).unwrap();
        let id = t.vault.write_record(s, &rt, &fields).await.unwrap().id;
        // An update writes the values again; it must not leave clear copies either.
        let changes: BTreeMap<_, _> = [(
            name("full_name"),
            FieldChange::Set(FieldValue::text("MARKER-updated-name")),
        )]
        .into_iter()
        .collect();
        t.vault.update_record(id, 1, &changes).await.unwrap();
    }
    markers.push("MARKER-updated-name".into());
    let key_material = t.vault.test_hooks_key_material().await.unwrap();
    assert!(
        key_material.len() > 10,
        "KEKs, index and audit keys, and DEKs"
    );

    let vault = t.vault;
    vault.stores().clone().close().await.unwrap();
    drop(vault);

    let data = t.stores.data_store_bytes();
    let keys = t.stores.key_store_bytes();
    // Positive controls: the scan does see what is stored in clear (school id, record type),
    // so finding no marker means the markers are not there, not that the scan is blind.
    assert!(
        contains(&data, b"school-1"),
        "scan sees the data store's clear columns"
    );
    assert!(
        contains(&data, b"record_fields"),
        "scan sees the data store's tables"
    );
    assert!(contains(&keys, b"deks"), "scan sees the key store's tables");
    for m in &markers {
        assert!(
            !contains(&data, m.as_bytes()),
            "marker {m} in clear in the data store"
        );
        assert!(
            !contains(&keys, m.as_bytes()),
            "marker {m} in clear in the key store"
        );
    }
    for k in &key_material {
        assert_eq!(k.len(), 32);
        assert!(!contains(&data, k), "key bytes in the data store");
        assert!(
            !contains(&data, hex(k).as_bytes()),
            "key bytes (hex) in the data store"
        );
        assert!(!contains(&keys, k), "unwrapped key bytes in the key store");
        assert!(
            !contains(&keys, hex(k).as_bytes()),
            "unwrapped key bytes (hex) in the key store"
        );
    }
}

async fn catalog_refuses_unknown_fields(backend: Backend) {
    let t = TestVault::new(backend).await;
    let s = subject(&t, SubjectKind::Student, None).await;
    let rt = RecordType::parse("student").unwrap();
    let mut fields = BTreeMap::new();
    fields.insert(name("full_name"), FieldValue::text("A"));
    fields.insert(name("political_views"), FieldValue::text("MARKER-politics"));
    let err = t.vault.write_record(s, &rt, &fields).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, VaultError::UnknownField { field, record_type }
            if field.as_str() == "political_views" && record_type.as_str() == "student"),
        "{msg}"
    );
    assert!(
        msg.contains("political_views") && msg.contains("student"),
        "{msg}"
    );
    assert!(!msg.contains("MARKER"), "the error must not echo the value");

    let err = t
        .vault
        .write_record(s, &RecordType::parse("applicant").unwrap(), &fields)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("'applicant'"), "{err}");

    let mut bad_type = BTreeMap::new();
    bad_type.insert(name("date_of_birth"), FieldValue::text("MARKER-not-a-date"));
    let err = t.vault.write_record(s, &rt, &bad_type).await.unwrap_err();
    assert!(err.to_string().contains("date_of_birth") && err.to_string().contains("YYYY-MM-DD"));
    assert!(!err.to_string().contains("MARKER"));

    let staff_rt = RecordType::parse("staff").unwrap();
    let mut f = BTreeMap::new();
    f.insert(name("full_name"), FieldValue::text("A"));
    let err = t.vault.write_record(s, &staff_rt, &f).await.unwrap_err();
    assert!(matches!(err, VaultError::WrongSubjectKind { .. }), "{err}");

    // Nothing was stored by any of the refusals.
    let db = t.stores.raw_data().await;
    let n = db
        .query_one_raw(sql(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM records",
            vec![],
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(n, 0);
}

async fn stale_update_is_refused_and_changes_nothing(backend: Backend) {
    let t = TestVault::new(backend).await;
    let cat = catalog();
    let all = all_categories(&cat);
    let s = subject(&t, SubjectKind::Student, None).await;
    let rt = RecordType::parse("student").unwrap();
    let fields: BTreeMap<_, _> = [
        (name("full_name"), FieldValue::text("Aruzhan")),
        (name("address"), FieldValue::text("Almaty")),
    ]
    .into_iter()
    .collect();
    let id = t.vault.write_record(s, &rt, &fields).await.unwrap().id;

    let set = |f: &str, v: &str| -> BTreeMap<FieldName, FieldChange> {
        [(name(f), FieldChange::Set(FieldValue::text(v)))]
            .into_iter()
            .collect()
    };
    let m = t
        .vault
        .update_record(id, 1, &set("address", "Astana"))
        .await
        .unwrap();
    assert_eq!(m.version, 2);
    // A second writer still holding version 1.
    let err = t
        .vault
        .update_record(id, 1, &set("address", "Shymkent"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::StaleVersion {
                expected: 1,
                current: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let view = t.vault.read_record(id, &all).await.unwrap();
    assert_eq!(view.meta.version, 2);
    assert_eq!(
        view.fields[&name("address")],
        FieldView::Open {
            category: Category::parse("contact").unwrap(),
            value: FieldValue::text("Astana")
        }
    );
    // A new category on update gets its own DEK; removal deletes the field.
    let mut ch = set("health_issues", "diabetes");
    ch.insert(name("address"), FieldChange::Remove);
    t.vault.update_record(id, 2, &ch).await.unwrap();
    let view = t.vault.read_record(id, &all).await.unwrap();
    assert!(!view.fields.contains_key(&name("address")));
    assert!(matches!(
        view.fields[&name("health_issues")],
        FieldView::Open { .. }
    ));
    assert_eq!(t.vault.dek_count(id).await.unwrap(), 3);
}

async fn shredded_record_is_gone_with_its_deks(backend: Backend) {
    let t = TestVault::new(backend).await;
    let cat = catalog();
    let s = subject(&t, SubjectKind::Student, None).await;
    let (fields, _) = full_record(&cat, "student", &make_iin("100101", 5));
    let rt = RecordType::parse("student").unwrap();
    let id = t.vault.write_record(s, &rt, &fields).await.unwrap().id;
    let keep = t.vault.write_record(s, &rt, &fields).await.unwrap().id;
    assert!(t.vault.dek_count(id).await.unwrap() >= 6);

    let receipt = t.vault.shred_record(id).await.unwrap();
    assert_eq!(receipt.fields_deleted as usize, fields.len());
    assert!(receipt.deks_destroyed >= 6);
    assert_eq!(t.vault.dek_count(id).await.unwrap(), 0);
    let err = t
        .vault
        .read_record(id, &all_categories(&cat))
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::RecordShredded(r) if r == id));
    assert!(matches!(
        t.vault.shred_record(id).await.unwrap_err(),
        VaultError::RecordShredded(_)
    ));
    let db = t.stores.raw_data().await;
    let n = db
        .query_one_raw(sql(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM record_fields WHERE record_id = $1",
            vec![id.to_string().into()],
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(n, 0, "ciphertext deleted");
    assert!(
        vault_tests::every_field_opens(
            &t.vault
                .read_record(keep, &all_categories(&cat))
                .await
                .unwrap()
        ),
        "the record beside the shredded one keeps every field"
    );
}

async fn interrupted_shred_is_finished_on_open(backend: Backend) {
    let t = TestVault::new(backend).await;
    let s = subject(&t, SubjectKind::Student, None).await;
    let rt = RecordType::parse("student").unwrap();
    let fields: BTreeMap<_, _> = [(name("health_issues"), FieldValue::text("x"))]
        .into_iter()
        .collect();
    let id = t.vault.write_record(s, &rt, &fields).await.unwrap().id;
    // A crash right after the first step: the record is marked, nothing destroyed yet.
    let db = t.stores.raw_data().await;
    db.execute_raw(sql(
        db.get_database_backend(),
        "UPDATE records SET state = 'shredding' WHERE id = $1",
        vec![id.to_string().into()],
    ))
    .await
    .unwrap();
    let t = t.reopen().await.unwrap();
    assert_eq!(t.vault.dek_count(id).await.unwrap(), 0);
    assert!(matches!(
        t.vault.read_record(id, &BTreeSet::new()).await.unwrap_err(),
        VaultError::RecordShredded(_)
    ));
    // Whoever asked was never answered; the finished shred is still certified.
    let log = t.vault.audit_entries().await.unwrap();
    let cert = log
        .iter()
        .find(|e| e.action == "record.shred" && e.record == Some(id.to_string()))
        .expect("a certificate for the finished shred");
    assert_eq!(cert.actor, "vault");
    assert_eq!(
        cert.reason.as_deref(),
        Some(
            "shred certificate: finished after an interruption; 1 keys destroyed, 1 fields deleted"
        )
    );
}

async fn failed_data_write_leaves_no_deks(backend: Backend) {
    let t = TestVault::new(backend).await;
    let s = subject(&t, SubjectKind::Student, None).await;
    let db = t.stores.raw_data().await;
    // Make the data-store transaction fail after the DEKs were stored.
    db.execute_unprepared("DROP TABLE record_fields")
        .await
        .unwrap();
    let fields: BTreeMap<_, _> = [
        (name("full_name"), FieldValue::text("x")),
        (name("religion"), FieldValue::text("y")),
    ]
    .into_iter()
    .collect();
    let err = t
        .vault
        .write_record(s, &RecordType::parse("student").unwrap(), &fields)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Store(_)), "{err:?}");
    let keys = t.stores.raw_keys().await;
    let n = keys
        .query_one_raw(sql(
            keys.get_database_backend(),
            "SELECT COUNT(*) AS n FROM deks",
            vec![],
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(n, 0, "the DEKs of the failed write were removed");
    let n = db
        .query_one_raw(sql(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM records",
            vec![],
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(n, 0, "no half-written record");
}

async fn count(db: &sea_orm::DatabaseConnection, table: &str) -> i64 {
    db.query_one_raw(sql(
        db.get_database_backend(),
        &format!("SELECT COUNT(*) AS n FROM {table}"),
        vec![],
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get::<i64>("", "n")
    .unwrap()
}

/// Group commit: 40 concurrent creates, one of which the database refuses (a trigger stands in
/// for any per-row failure). The 39 others land and open; the bad one fails alone and leaves
/// neither DEKs nor rows.
async fn concurrent_writes_land_together_and_a_bad_one_fails_alone(backend: Backend) {
    let t = TestVault::new(backend).await;
    let good = subject(&t, SubjectKind::Student, None).await;
    let bad = subject(&t, SubjectKind::Student, None).await;
    let db = t.stores.raw_data().await;
    vault_tests::refuse_inserts(&db, "records", "subject_id", bad).await;
    let student = RecordType::parse("student").unwrap();
    let fields = |i: usize| -> BTreeMap<FieldName, FieldValue> {
        [
            (name("full_name"), FieldValue::text(&format!("Student {i}"))),
            (name("religion"), FieldValue::text(&format!("R{i}"))),
        ]
        .into_iter()
        .collect()
    };
    let writes = (0..40).map(|i| {
        let (v, student, f) = (&t.vault, &student, fields(i));
        async move {
            let who = if i == 17 { bad } else { good };
            (i, v.write_record(who, student, &f).await)
        }
    });
    let results = futures::future::join_all(writes).await;
    let all = all_categories(t.vault.catalog());
    for (i, r) in results {
        if i == 17 {
            assert!(matches!(r, Err(VaultError::Store(_))), "{r:?}");
            continue;
        }
        let meta = r.unwrap();
        let view = t.vault.read_record(meta.id, &all).await.unwrap();
        match &view.fields[&name("full_name")] {
            FieldView::Open { value, .. } => {
                assert_eq!(value, &FieldValue::text(&format!("Student {i}")))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(count(&db, "records").await, 39);
    assert_eq!(count(&db, "record_fields").await, 78);
    let keys = t.stores.raw_keys().await;
    assert_eq!(
        count(&keys, "deks").await,
        78,
        "two DEKs per stored record, none left by the refused one"
    );
}

/// A server keeps its keyring in memory; when a custodian rotates elsewhere, its next write
/// must not wrap new DEKs under the old KEK (retiring that KEK would make them unreadable).
async fn a_write_after_a_rotation_elsewhere_is_sealed_under_the_new_kek(backend: Backend) {
    let t = TestVault::new(backend).await;
    let s = subject(&t, SubjectKind::Student, None).await;
    let custodian = Vault::open(
        t.stores.open().await,
        vault_tests::policy().await,
        Unlock::identity_file(&t.identity).unwrap(),
    )
    .await
    .unwrap();
    let identity = Category::parse("identity").unwrap();
    let new_version = custodian.rotate_kek(&identity, None).await.unwrap();
    let fields: BTreeMap<_, _> = [(name("full_name"), FieldValue::text("After rotation"))]
        .into_iter()
        .collect();
    let meta = t
        .vault
        .write_record(s, &RecordType::parse("student").unwrap(), &fields)
        .await
        .unwrap();
    let status = custodian.key_status().await.unwrap();
    let under = |v: u32| {
        status
            .iter()
            .find(|k| k.kek.category == identity && k.kek.version == v)
            .map_or(0, |k| k.deks)
    };
    assert_eq!(under(new_version), 1, "{status:?}");
    assert_eq!(under(new_version - 1), 0, "{status:?}");
    custodian
        .retire_kek(&identity, new_version - 1, None)
        .await
        .unwrap();
    let view = t
        .vault
        .read_record(meta.id, &all_categories(t.vault.catalog()))
        .await
        .unwrap();
    assert!(matches!(
        &view.fields[&name("full_name")],
        FieldView::Open { value, .. } if value == &FieldValue::text("After rotation")
    ));
}

async fn subjects_found_by_iin_blind_index(backend: Backend) {
    let t = TestVault::new(backend).await;
    let iin = make_iin("090817", 6);
    let id = subject(&t, SubjectKind::Student, Some(&iin)).await;
    let found = t
        .vault
        .find_subject_by_iin(&Iin::parse(&iin).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, id);
    assert_eq!(found.school.as_str(), "school-1");
    let other = make_iin("090818", 6);
    assert!(
        t.vault
            .find_subject_by_iin(&Iin::parse(&other).unwrap())
            .await
            .unwrap()
            .is_none()
    );
    let err = t
        .vault
        .create_subject(NewSubject {
            school: SchoolId::parse("school-1").unwrap(),
            kind: SubjectKind::Student,
            iin: Some(Iin::parse(&iin).unwrap()),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::DuplicateIin));
    assert!(!err.to_string().contains(&iin));
    // Another school enrols the same child on its own: its answer says nothing of school 1.
    let moved = t
        .vault
        .create_subject(NewSubject {
            school: SchoolId::parse("school-2").unwrap(),
            kind: SubjectKind::Student,
            iin: Some(Iin::parse(&iin).unwrap()),
        })
        .await
        .unwrap();
    assert_ne!(moved.id, found.id);
}

async fn sealed_fields_name_category_and_reason(backend: Backend) {
    let t = TestVault::new(backend).await;
    let cat = catalog();
    let s = subject(&t, SubjectKind::Student, None).await;
    let (fields, _) = full_record(&cat, "student", &make_iin("130202", 5));
    let id = t
        .vault
        .write_record(s, &RecordType::parse("student").unwrap(), &fields)
        .await
        .unwrap()
        .id;
    let allowed: BTreeSet<_> = ["identity", "contact"]
        .iter()
        .map(|c| Category::parse(c).unwrap())
        .collect();
    let view = t.vault.read_record(id, &allowed).await.unwrap();
    for (n, v) in &view.fields {
        let def = cat
            .record_type(&RecordType::parse("student").unwrap())
            .unwrap()
            .field(n)
            .unwrap();
        match v {
            FieldView::Open { category, .. } => assert!(allowed.contains(category), "{n}"),
            FieldView::Sealed { category, reason } => {
                assert_eq!(category, &def.category);
                assert!(!allowed.contains(category));
                assert_eq!(reason, &SealReason::NotAllowed);
            }
        }
    }
    let debug = format!("{view:?}");
    assert!(
        !debug.contains("MARKER"),
        "Debug of a view must not print values"
    );
}

async fn migrations_go_down_and_up(backend: Backend) {
    let t = TestVault::new(backend).await;
    let stores = t.vault.stores().clone();
    stores.migrate_down().await.unwrap();
    let db = t.stores.raw_data().await;
    let q = match db.get_database_backend() {
        DbBackend::Sqlite => "SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'records'",
        _ => "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_name = 'records'",
    };
    let count = |db: sea_orm::DatabaseConnection| async move {
        db.query_one_raw(sql(db.get_database_backend(), q, vec![]))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap()
    };
    assert_eq!(count(db).await, 0);
    t.stores.open().await; // migrates up again
    assert_eq!(count(t.stores.raw_data().await).await, 1);
}

async fn orphan_deks_are_collected_and_nothing_else(backend: Backend) {
    let clock = std::sync::Arc::new(vault_core::ManualClock::new(
        "2026-12-01T09:00:00Z".parse().unwrap(),
    ));
    let t = TestVault::with_clock(backend, clock.clone()).await;
    let v = &t.vault;
    let s = subject(&t, SubjectKind::Student, None).await;
    let rt = RecordType::parse("student").unwrap();
    let fields: BTreeMap<_, _> = [
        (name("full_name"), FieldValue::text("MARKER-name")),
        (name("health_issues"), FieldValue::text("MARKER-health")),
    ]
    .into_iter()
    .collect();
    let orphan = v.write_record(s, &rt, &fields).await.unwrap().id;
    let kept = v.write_record(s, &rt, &fields).await.unwrap().id;
    let shredded = v.write_record(s, &rt, &fields).await.unwrap().id;
    v.shred_record(shredded).await.unwrap();
    clock.set("2026-12-03T09:00:00Z".parse().unwrap());
    let recent = v.write_record(s, &rt, &fields).await.unwrap().id;
    // A create that died between its two commits: its DEKs are stored, its record is not.
    let db = t.stores.raw_data().await;
    for r in [orphan, recent] {
        for table in ["record_fields WHERE record_id", "records WHERE id"] {
            db.execute_raw(sql(
                db.get_database_backend(),
                &format!("DELETE FROM {table} = $1"),
                vec![r.to_string().into()],
            ))
            .await
            .unwrap();
        }
    }

    assert!(matches!(
        v.collect_orphan_deks(chrono::Duration::minutes(10), false)
            .await
            .unwrap_err(),
        VaultError::Invalid(_)
    ));
    let day = chrono::Duration::hours(24);
    let dry = v.collect_orphan_deks(day, true).await.unwrap();
    assert_eq!((dry.checked, dry.orphans), (4, 2), "{dry:?}");
    assert_eq!(
        v.dek_count(orphan).await.unwrap(),
        2,
        "a dry run removes nothing"
    );

    let done = v.collect_orphan_deks(day, false).await.unwrap();
    assert_eq!((done.checked, done.orphans), (4, 2), "{done:?}");
    assert_eq!(v.dek_count(orphan).await.unwrap(), 0);
    assert_eq!(v.dek_count(kept).await.unwrap(), 2);
    assert_eq!(
        v.dek_count(recent).await.unwrap(),
        2,
        "younger than a day: a create may still be in flight"
    );
    let view = v
        .read_record(kept, &all_categories(v.catalog()))
        .await
        .unwrap();
    assert_eq!(view.fields.len(), 2);
    let again = v.collect_orphan_deks(day, false).await.unwrap();
    assert_eq!((again.checked, again.orphans), (2, 0));
    let log = v.audit_entries().await.unwrap();
    let gc: Vec<_> = log.iter().filter(|e| e.action == "key.gc").collect();
    assert_eq!(
        gc.len(),
        2,
        "one entry per collection that was not a dry run"
    );
    assert_eq!(
        gc[0].reason.as_deref(),
        Some("2 orphan data keys removed of 4 older than 24 hours")
    );
}
