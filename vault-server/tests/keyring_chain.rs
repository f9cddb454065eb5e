//! The keyring's chain under attack, with the real `vault-server` (on port 0) and the real
//! `vaultctl`, on SQLite and on PostgreSQL. The attacker is an administrator who can write the
//! key store and nothing else: they edit it with the `sqlite3` shell or `psql`, as they would.
//!
//! - a keyring made elsewhere (`vaultctl keyring init --recipient <custodian> --recipient
//!   <attacker>` on scratch stores), copied in with the next generation number: refused by the
//!   running server (`/readyz` 503, writes 503, a `keyring.refused` audit entry, nothing sealed
//!   under it), by `vaultctl` and by a server starting;
//! - the same with the scratch store's whole, valid chain copied in too;
//! - an older generation put back (a rollback): refused;
//! - a rotation and a recipient change by `vaultctl`: picked up by the running server.
//!
//! `vaultctl` is the binary next to `vault-server` in the target folder: `cargo test
//! --workspace` builds it; for this test alone run `cargo build -p vault-cli` first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Server, start, vaultctl_bin};
use serde_json::json;
use vault_core::{KeyringError, StoreConfig, Stores, Unlock, Vault, VaultError};
use vault_tests::{Backend, TestStores, on_both_backends, policy};

on_both_backends!(
    a_keyring_made_elsewhere_with_the_next_generation_is_refused,
    a_whole_chain_made_elsewhere_is_refused,
    an_older_generation_put_back_is_refused,
    a_rotation_by_vaultctl_is_picked_up_by_the_running_server,
);

/// One pair of stores as `vaultctl` and the shells reach them.
struct Place {
    backend: Backend,
    /// SQLite: the data folder. PostgreSQL: unused.
    dir: PathBuf,
    config: StoreConfig,
}

impl Place {
    fn of_server(s: &Server) -> Place {
        let dir = s.stores.dir.path().join("vault-data");
        let config = match s.stores.backend {
            Backend::Sqlite => StoreConfig::sqlite_dir(&dir).unwrap(),
            Backend::Postgres => s.stores.config.clone(),
        };
        Place {
            backend: s.stores.backend,
            dir,
            config,
        }
    }

    fn of_stores(t: &TestStores) -> Place {
        Place {
            backend: t.backend,
            dir: t.dir.path().join("data"),
            config: t.config.clone(),
        }
    }

    fn vaultctl(&self, identity: &Path, args: &[&str]) -> Output {
        let mut c = Command::new(vaultctl_bin());
        c.arg("--policies")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"));
        match self.backend {
            Backend::Sqlite => {
                c.arg("--data-dir").arg(&self.dir);
            }
            Backend::Postgres => {
                c.arg("--data-url").arg(&self.config.data_url);
                c.arg("--keys-url").arg(&self.config.keys_url);
            }
        }
        let o = c
            .env_remove("VAULT_IDENTITY")
            .env_remove("VAULT_PASSPHRASE_FILE")
            .env_remove("VAULT_TOKEN")
            .env_remove("VAULT_TOKEN_FILE")
            .args(args)
            .arg("--identity")
            .arg(identity)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "vaultctl {args:?}: {err}");
        o
    }

    fn vaultctl_ok(&self, identity: &Path, args: &[&str]) -> String {
        let o = self.vaultctl(identity, args);
        assert!(
            o.status.success(),
            "vaultctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `vaultctl` fails with exit 1; answers its stderr.
    fn vaultctl_refused(&self, identity: &Path, args: &[&str]) -> String {
        let o = self.vaultctl(identity, args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(
            o.status.code(),
            Some(1),
            "vaultctl {args:?} must fail: {err}"
        );
        err
    }

    /// Runs SQL on one store with the shell an administrator would use; answers its output
    /// (rows one a line, columns separated by `|`).
    fn sql(&self, keys: bool, sql: &str) -> String {
        let o = match self.backend {
            // A busy timeout, as the vault's own connections have: a store in use is locked
            // for a moment now and then.
            Backend::Sqlite => Command::new("sqlite3")
                .args(["-bail", "-cmd", ".timeout 10000"])
                .arg(self.dir.join(if keys { "keys.db" } else { "data.db" }))
                .arg(sql)
                .output(),
            Backend::Postgres => Command::new("psql")
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
                .arg(if keys {
                    &self.config.keys_url
                } else {
                    &self.config.data_url
                })
                .arg("-c")
                .arg(sql)
                .output(),
        }
        .unwrap_or_else(|e| {
            panic!("the sqlite3 shell and psql are needed (apt-get install sqlite3 postgresql-client): {e}")
        });
        assert!(
            o.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    fn hex_of(&self, column: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("lower(hex({column}))"),
            Backend::Postgres => format!("encode({column}, 'hex')"),
        }
    }

    fn text_hex_of(&self, column: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("lower(hex({column}))"),
            Backend::Postgres => format!("encode(convert_to({column}, 'UTF8'), 'hex')"),
        }
    }

    fn blob(&self, hex: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("X'{hex}'"),
            Backend::Postgres => format!("decode('{hex}', 'hex')"),
        }
    }

    fn text(&self, hex: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("CAST(X'{hex}' AS TEXT)"),
            Backend::Postgres => format!("convert_from(decode('{hex}', 'hex'), 'UTF8')"),
        }
    }

    /// The keyring row and every link of the chain, as an attacker would copy them.
    fn snapshot(&self) -> Snapshot {
        let row = self.sql(
            true,
            &format!(
                "SELECT generation, {}, {}, updated_at FROM keyring",
                self.hex_of("sealed"),
                self.text_hex_of("recipients")
            ),
        );
        let mut f = row.splitn(4, '|');
        let generation = f.next().unwrap().parse().unwrap();
        let sealed = f.next().unwrap().to_owned();
        let recipients = f.next().unwrap().to_owned();
        let updated_at = f.next().unwrap().to_owned();
        let links = self
            .sql(
                true,
                &format!(
                    "SELECT generation, {}, {}, {}, created_at FROM keyring_chain ORDER BY generation",
                    self.hex_of("public_key"),
                    self.hex_of("signature"),
                    self.hex_of("sealed_sha256")
                ),
            )
            .lines()
            .map(str::to_owned)
            .collect();
        Snapshot {
            generation,
            sealed,
            recipients,
            updated_at,
            links,
        }
    }

    /// Writes the keyring row of `s` (with `generation`) over this store's, leaving the chain.
    fn put_row(&self, s: &Snapshot, generation: i64) {
        self.sql(
            true,
            &format!(
                "UPDATE keyring SET generation = {generation}, sealed = {}, recipients = {}, updated_at = '{}' WHERE id = 1",
                self.blob(&s.sealed),
                self.text(&s.recipients),
                s.updated_at
            ),
        );
    }

    /// Replaces this store's whole chain with the links of `s`.
    fn put_chain(&self, s: &Snapshot) {
        let mut sql = String::from("DELETE FROM keyring_chain;");
        for l in &s.links {
            let f: Vec<&str> = l.split('|').collect();
            sql.push_str(&format!(
                "INSERT INTO keyring_chain (generation, public_key, signature, sealed_sha256, created_at) VALUES ({}, {}, {}, {}, '{}');",
                f[0],
                self.blob(f[1]),
                self.blob(f[2]),
                self.blob(f[3]),
                f[4]
            ));
        }
        self.sql(true, &sql);
    }

    fn count(&self, keys: bool, table: &str) -> i64 {
        self.sql(keys, &format!("SELECT count(*) FROM {table}"))
            .parse()
            .unwrap()
    }

    /// The reasons of every `keyring.refused` audit entry.
    fn refusals(&self) -> Vec<String> {
        self.sql(
            false,
            "SELECT reason FROM audit_log WHERE action = 'keyring.refused' ORDER BY seq",
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }

    async fn open_with(&self, identity: &Path) -> Result<Vault, VaultError> {
        Vault::open(
            Stores::open(&self.config).await.unwrap(),
            policy().await,
            Unlock::identity_file(identity).unwrap(),
        )
        .await
    }
}

struct Snapshot {
    generation: i64,
    sealed: String,
    recipients: String,
    updated_at: String,
    links: Vec<String>,
}

fn good_copy(s: &Snapshot) -> Snapshot {
    Snapshot {
        generation: s.generation,
        sealed: s.sealed.clone(),
        recipients: s.recipients.clone(),
        updated_at: s.updated_at.clone(),
        links: s.links.clone(),
    }
}

/// The attacker's own identity and a keyring sealed to the custodian and to them, made with
/// the real vaultctl on scratch stores (kept alive by the first value).
async fn attackers_keyring(backend: Backend, s: &Server) -> (TestStores, PathBuf, Place) {
    let scratch = TestStores::new(backend).await;
    let attacker = scratch.dir.path().join("attacker.txt");
    Unlock::generate_identity_file(&attacker).unwrap();
    let made = Place::of_stores(&scratch);
    made.vaultctl_ok(
        &attacker,
        &[
            "keyring",
            "init",
            "--recipient",
            &recipient_of(&custodian(s)),
            "--recipient",
            &recipient_of(&attacker),
        ],
    );
    (scratch, attacker, made)
}

fn custodian(s: &Server) -> PathBuf {
    s.stores.dir.path().join("vault-data/dev-custodian.txt")
}

fn recipient_of(identity: &Path) -> String {
    std::fs::read_to_string(identity)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("an identity file from age-keygen or the vault")
        .trim()
        .to_owned()
}

fn write_record(s: &Server, sid: &str, name: &str) -> common::Resp {
    s.post(
        &format!("/v1/subjects/{sid}/records"),
        "admissions",
        Some("legal_administrative"),
        json!({"record_type": "student", "fields": {"full_name": name}}),
    )
}

fn readyz(s: &Server) -> common::Resp {
    s.call("GET", "/readyz", None, &[], None)
}

/// A server starting on stores whose keyring is refused: exits with an error naming it.
fn a_server_start_is_refused(s: &Server) {
    let data = s.stores.dir.path().join("vault-data");
    let mut c = Command::new(env!("CARGO_BIN_EXE_vault-server"));
    c.args(["--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--policies")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"));
    if s.stores.backend == Backend::Postgres {
        c.args(["--data-url", &s.stores.config.data_url]);
        c.args(["--keys-url", &s.stores.config.keys_url]);
    }
    let o = c.env("VAULT_LOG", "info").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a server started: {out}");
    assert!(!out.contains("listening on"), "{out}");
    assert!(err.contains("is refused"), "{err}");
}

fn is_refused(e: &VaultError) -> bool {
    matches!(e, VaultError::Keyring(KeyringError::Refused { .. }))
}

/// Everything a refusal must show on a running server with the forged keyring in place.
fn the_running_server_refuses(s: &Server, place: &Place, sid: &str, seen: i64, before: usize) {
    let deks = place.count(true, "deks");
    let records = place.count(false, "records");
    let r = readyz(s);
    let j = r.problem(503, "keyring_refused");
    assert!(j["detail"].as_str().unwrap().contains("not chained"), "{j}");
    write_record(s, sid, "MARKER-after-forgery").problem(503, "keyring_refused");
    assert_eq!(place.count(true, "deks"), deks, "no key sealed under it");
    assert_eq!(place.count(false, "records"), records, "no record written");
    let refusals = place.refusals();
    assert!(refusals.len() > before, "{refusals:?}");
    let last = refusals.last().unwrap();
    assert!(
        last.contains(&format!("keyring generation {seen} refused")),
        "{last}"
    );
    // Once per stored keyring, however many requests meet it.
    readyz(s).problem(503, "keyring_refused");
    assert_eq!(place.refusals().len(), refusals.len());
}

/// Puts back the good keyring row and chain; the running server is ready and writes again.
fn recover(s: Server, place: &Place, good: &Snapshot, sid: &str) -> Server {
    place.put_row(good, good.generation);
    place.put_chain(good);
    let ready = readyz(&s);
    let written = write_record(&s, sid, "MARKER-recovered");
    if ready.status != 200 || written.status != 201 {
        let mut s = s;
        let _ = s.child.kill();
        let _ = s.child.wait();
        let log = s.log.join().unwrap();
        let tail: String = log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
        panic!(
            "not recovered: readyz {} {}, write {} {}; the log, newest first:\n{tail}",
            ready.status,
            ready.text(),
            written.status,
            written.text()
        );
    }
    s
}

async fn a_keyring_made_elsewhere_with_the_next_generation_is_refused(backend: Backend) {
    let s = start(backend).await;
    let place = Place::of_server(&s);
    let sid = s.new_student();
    assert_eq!(write_record(&s, &sid, "MARKER-before").status, 201);
    let good = place.snapshot();
    assert_eq!(good.generation, 1);
    assert_eq!(good.links.len(), 1, "a genesis link");

    // The attacker: their own identity, a keyring for the custodian and themselves, made with
    // the real vaultctl on scratch stores.
    let (_scratch, attacker, made) = attackers_keyring(backend, &s).await;
    let forged = made.snapshot();
    place.put_row(&forged, good.generation + 1);
    // Its self-signed link too, renumbered to the next generation, beside the real chain.
    let mut renumbered = Snapshot {
        links: vec![forged.links[0].replacen("1|", &format!("{}|", good.generation + 1), 1)],
        ..good_copy(&good)
    };
    renumbered.links.splice(0..0, good.links.iter().cloned());
    place.put_chain(&renumbered);
    let before = place.refusals().len();
    the_running_server_refuses(&s, &place, &sid, good.generation + 1, before);

    // vaultctl refuses it, says what was wrong and what to do, and it is in the audit log.
    let err = place.vaultctl_refused(&custodian(&s), &["keyring", "verify"]);
    assert!(err.contains("generation 2) is refused"), "{err}");
    assert!(err.contains("vaultctl restore"), "{err}");
    let err = place.vaultctl_refused(&custodian(&s), &["keyring", "status"]);
    assert!(err.contains("is refused"), "{err}");
    // The attacker's own identity opens nothing through the vault either.
    let e = place.open_with(&attacker).await.unwrap_err();
    assert!(is_refused(&e), "{e:?}");
    a_server_start_is_refused(&s);
    assert!(
        place.refusals().len() >= before + 4,
        "{:?}",
        place.refusals()
    );

    // Nothing was sealed to the attacker: every DEK opens with the custodian's keyring.
    let s = recover(s, &place, &good, &sid);
    let v = place.open_with(&custodian(&s)).await.unwrap();
    assert!(!v.refresh_keyring().await.unwrap());
    drop(v);
    let after = place.snapshot();
    assert_eq!(after.generation, 1);
    assert_eq!(after.sealed, good.sealed);
    s.stop(&["MARKER-"]);
}

async fn a_whole_chain_made_elsewhere_is_refused(backend: Backend) {
    let s = start(backend).await;
    let place = Place::of_server(&s);
    let sid = s.new_student();
    // Two legitimate generations on the victim: 1 and 2.
    place.vaultctl_ok(
        &custodian(&s),
        &["keyring", "rotate", "--category", "identity"],
    );
    assert_eq!(write_record(&s, &sid, "MARKER-before").status, 201);
    let good = place.snapshot();
    assert_eq!(good.generation, 2);

    // The attacker builds a complete, valid chain of their own up to generation 3 and copies
    // the row and every link in: the key store alone now says it all holds together.
    let (_scratch, attacker, made) = attackers_keyring(backend, &s).await;
    for _ in 0..2 {
        made.vaultctl_ok(&attacker, &["keyring", "rotate", "--category", "identity"]);
    }
    made.vaultctl_ok(&attacker, &["keyring", "verify"]);
    let forged = made.snapshot();
    assert_eq!(forged.generation, 3);
    place.put_chain(&forged);
    place.put_row(&forged, forged.generation);

    let before = place.refusals().len();
    the_running_server_refuses(&s, &place, &sid, 3, before);
    assert!(
        place
            .refusals()
            .last()
            .unwrap()
            .contains("chain was replaced"),
        "{:?}",
        place.refusals()
    );
    // A process starting has only the data store's pin, and it names the real chain.
    let err = place.vaultctl_refused(&custodian(&s), &["keyring", "verify"]);
    assert!(err.contains("the data store pins a chain"), "{err}");
    let e = place.open_with(&attacker).await.unwrap_err();
    assert!(is_refused(&e), "{e:?}");
    a_server_start_is_refused(&s);

    let s = recover(s, &place, &good, &sid);
    let out = place.vaultctl_ok(&custodian(&s), &["keyring", "verify"]);
    assert!(
        out.contains("the chain verifies from generation 1 to generation 2"),
        "{out}"
    );
    s.stop(&["MARKER-"]);
}

async fn an_older_generation_put_back_is_refused(backend: Backend) {
    let s = start(backend).await;
    let place = Place::of_server(&s);
    let sid = s.new_student();
    let old = place.snapshot();
    assert_eq!(old.generation, 1);
    place.vaultctl_ok(
        &custodian(&s),
        &["keyring", "rotate", "--category", "identity"],
    );
    assert_eq!(write_record(&s, &sid, "MARKER-gen-2").status, 201);
    let good = place.snapshot();
    assert_eq!(good.generation, 2);

    // The old row's bytes put back as they were (generation 1 and its sealed keyring).
    place.put_row(&old, old.generation);
    let before = place.refusals().len();
    the_running_server_refuses(&s, &place, &sid, 1, before);
    assert!(
        place.refusals().last().unwrap().contains("rollback"),
        "{:?}",
        place.refusals()
    );
    let err = place.vaultctl_refused(&custodian(&s), &["keyring", "verify"]);
    assert!(err.contains("rollback"), "{err}");

    // And the chain rewound with it: the data store's pin still says generation 2.
    place.put_chain(&old);
    let err = place.vaultctl_refused(&custodian(&s), &["keyring", "verify"]);
    assert!(err.contains("older than generation 2"), "{err}");
    a_server_start_is_refused(&s);
    readyz(&s).problem(503, "keyring_refused");

    let s = recover(s, &place, &good, &sid);
    s.stop(&["MARKER-"]);
}

async fn a_rotation_by_vaultctl_is_picked_up_by_the_running_server(backend: Backend) {
    let s = start(backend).await;
    let place = Place::of_server(&s);
    let sid = s.new_student();
    assert_eq!(write_record(&s, &sid, "MARKER-v1").status, 201);
    let out = place.vaultctl_ok(
        &custodian(&s),
        &["keyring", "rotate", "--category", "identity"],
    );
    assert!(out.contains("version 2"), "{out}");
    assert_eq!(readyz(&s).status, 200, "{}", readyz(&s).text());
    let r = write_record(&s, &sid, "MARKER-v2");
    assert_eq!(r.status, 201, "{}", r.text());
    let rid = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        place.sql(
            true,
            &format!(
                "SELECT kek_version FROM deks WHERE record_id = '{rid}' AND category = 'identity'"
            )
        ),
        "2",
        "the new record's key is wrapped under the new KEK"
    );
    // A change of recipients is a new signed generation too.
    let second = s.stores.dir.path().join("second-custodian.txt");
    let rcpt = Unlock::generate_identity_file(&second).unwrap().to_string();
    place.vaultctl_ok(&custodian(&s), &["keyring", "recipient", "add", &rcpt]);
    assert_eq!(place.snapshot().generation, 3);
    assert_eq!(readyz(&s).status, 200);
    assert_eq!(write_record(&s, &sid, "MARKER-v3").status, 201);
    // The new custodian's identity opens it; the chain verifies from its genesis.
    let out = place.vaultctl_ok(&second, &["keyring", "verify"]);
    assert!(
        out.contains("the chain verifies from generation 1 to generation 3"),
        "{out}"
    );
    assert!(
        out.contains("the data store pins the chain from generation 1 up to generation 3"),
        "{out}"
    );
    assert!(place.refusals().is_empty(), "{:?}", place.refusals());
    let read = s.get(
        &format!("/v1/records/{rid}"),
        "admissions",
        Some("legal_administrative"),
    );
    assert_eq!(read.json()["fields"]["full_name"]["value"], "MARKER-v2");
    s.stop(&["MARKER-"]);
}

on_both_backends!(a_keyring_from_before_the_chain_opens_and_is_signed_on_its_next_save);

/// A keyring of format 1 (no chain key, no links, no pin), as every keyring was before the
/// chain: it still opens; `reseal` gives it a chain key and starts its chain; after that an
/// unsigned keyring put in the key store is refused.
async fn a_keyring_from_before_the_chain_opens_and_is_signed_on_its_next_save(backend: Backend) {
    let t = vault_tests::TestVault::new(backend).await;
    let place = Place::of_stores(&t.stores);
    let sealed = Vault::sealed_keyring(t.vault.stores()).await.unwrap();
    let unlock = Unlock::identity_file(&t.identity).unwrap();
    let old = vault_core::Keyring::unseal(&sealed, &unlock)
        .unwrap()
        .without_chain_key()
        .seal(&vault_core::SealTo::Recipients(vec![t.recipient.clone()]))
        .unwrap();
    let old_hex: String = old.iter().map(|b| format!("{b:02x}")).collect();
    let identity = t.identity.clone();
    drop(t.vault);
    let put_unsigned = |generation: i64| {
        place.sql(
            true,
            &format!(
                "UPDATE keyring SET generation = {generation}, sealed = {} WHERE id = 1",
                place.blob(&old_hex)
            ),
        );
    };
    put_unsigned(1);
    place.sql(true, "DELETE FROM keyring_chain");
    place.sql(false, "DELETE FROM keyring_pin");

    let v = place.open_with(&identity).await.unwrap();
    assert!(v.keyring_chain().await.unwrap().entries.is_empty());
    assert_eq!(v.reseal_keyring(None).await.unwrap(), 2);
    let report = v.keyring_chain().await.unwrap();
    assert_eq!(report.generation, 2);
    assert_eq!(
        report.entries.len(),
        1,
        "a new chain starts at generation 2"
    );
    assert_eq!(report.entries[0].signed_by, 2);
    assert_eq!(report.pinned, Some((2, 2)));
    drop(v);
    let v = place.open_with(&identity).await.unwrap();
    assert!(v.check_ready().await.is_ok());

    // The unsigned keyring put back with a higher generation: refused now.
    put_unsigned(3);
    let e = v.check_ready().await.unwrap_err();
    assert!(is_refused(&e), "{e:?}");
    drop(v);
    let e = place.open_with(&identity).await.unwrap_err();
    assert!(is_refused(&e), "{e:?}");
    // And with its links gone too: the data store's pin still names the chain.
    place.sql(true, "DELETE FROM keyring_chain");
    let e = place.open_with(&identity).await.unwrap_err();
    assert!(
        matches!(
            &e,
            VaultError::Keyring(KeyringError::Refused {
                problem: vault_core::ChainProblem::Unsigned { pinned: 2 },
                ..
            })
        ),
        "{e:?}"
    );
}

on_both_backends!(an_edited_recipient_list_is_never_sealed_to);

/// The key store's `recipients` column is what the keyring row says it is sealed to, and the
/// key-store DBA can write it. Before the keyring recorded its own target (formats 4 and 5),
/// the next rotation sealed the new generation to every line of that column: the attacker's
/// key among them. Now a save seals to what the unsealed keyring says.
async fn an_edited_recipient_list_is_never_sealed_to(backend: Backend) {
    let s = start(backend).await;
    let place = Place::of_server(&s);
    let attacker = s.stores.dir.path().join("attacker.txt");
    let theirs = Unlock::generate_identity_file(&attacker)
        .unwrap()
        .to_string();
    let before = place.sql(true, "SELECT recipients FROM keyring");
    place.sql(
        true,
        &format!("UPDATE keyring SET recipients = recipients || '\n{theirs}'"),
    );
    let out = place.vaultctl_ok(
        &custodian(&s),
        &["keyring", "rotate", "--category", "identity"],
    );
    assert!(out.contains("version 2"), "{out}");
    let stores = Stores::open(&place.config).await.unwrap();
    let sealed = Vault::sealed_keyring(&stores).await.unwrap();
    assert!(
        vault_core::Keyring::unseal(&sealed, &Unlock::identity_file(&attacker).unwrap()).is_err(),
        "the new generation is not sealed to the key the administrator added"
    );
    assert!(
        vault_core::Keyring::unseal(&sealed, &Unlock::identity_file(&custodian(&s)).unwrap())
            .is_ok()
    );
    assert_eq!(
        place.sql(true, "SELECT recipients FROM keyring"),
        before,
        "the row names the keyring's own recipients again"
    );
    assert_eq!(readyz(&s).status, 200);
    drop(stores);
    let stores = Stores::open(&place.config).await.unwrap();

    // The same administrator copies in a quorum of their own (shares sealed to themselves, from
    // `vaultctl keyring init --threshold 2` on scratch stores): the custodian's next save
    // ignores rows this keyring was never sealed to, and the server does not come up sealed.
    let scratch = TestStores::new(backend).await;
    let made = Place::of_stores(&scratch);
    let a2 = scratch.dir.path().join("attacker-2.txt");
    let theirs2 = Unlock::generate_identity_file(&a2).unwrap().to_string();
    made.vaultctl_ok(
        &attacker,
        &[
            "keyring",
            "init",
            "--threshold",
            "2",
            "--recipient",
            &theirs,
            "--recipient",
            &theirs2,
        ],
    );
    let unhex = |h: &str| match backend {
        Backend::Sqlite => format!("X'{h}'"),
        Backend::Postgres => format!("decode('{h}', 'hex')"),
    };
    let hexed = |c: &str| match backend {
        Backend::Sqlite => format!("hex({c})"),
        Backend::Postgres => format!("encode({c}, 'hex')"),
    };
    let rows = made.sql(
        true,
        &format!(
            "SELECT x, threshold, quorum_recipient, custodian, {}, {} FROM keyring_shares",
            hexed("sealed"),
            hexed("commitment")
        ),
    );
    let copy_in = || {
        for row in rows.lines() {
            let c: Vec<&str> = row.split('|').collect();
            place.sql(
                true,
                &format!(
                    "INSERT INTO keyring_shares (x, threshold, quorum_recipient, custodian, sealed, commitment, created_at) VALUES ({}, {}, '{}', '{}', {}, {}, '2026-12-03T00:00:00Z')",
                    c[0], c[1], c[2], c[3], unhex(c[4]), unhex(c[5])
                ),
            );
        }
        assert_eq!(place.count(true, "keyring_shares"), 2);
    };
    copy_in();
    let out = place.vaultctl_ok(
        &custodian(&s),
        &["keyring", "rotate", "--category", "identity"],
    );
    assert!(out.contains("version 3"), "{out}");
    // Still sealed to the custodian's own list (a quorum-sealed one would not open with it).
    let sealed = Vault::sealed_keyring(&stores).await.unwrap();
    assert!(
        vault_core::Keyring::unseal(&sealed, &Unlock::identity_file(&custodian(&s)).unwrap())
            .is_ok()
    );
    assert_eq!(place.sql(true, "SELECT recipients FROM keyring"), before);
    assert_eq!(
        place.count(true, "keyring_shares"),
        0,
        "the foreign rows are gone"
    );
    // Put in again, they do not make a restarted server come up sealed.
    copy_in();
    let shared = s.stores.clone();
    s.stop(&[]);
    let again = common::start_on(shared, &[]);
    assert_eq!(readyz(&again).status, 200, "{}", readyz(&again).text());
    again.stop(&[]);
}
