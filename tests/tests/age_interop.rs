//! The keyring is a standard age file: sealed to a key made by the real `age-keygen`, it
//! unseals with that identity and no other, and the real `age -d -i` opens it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use vault_core::{CustodianRecipient, KeyringError, SealTo, Unlock, Vault, VaultError};
use vault_tests::{Backend, TestStores, catalog, on_both_backends, tool};

on_both_backends!(keyring_opens_with_real_age_tools);

fn age_keygen(path: &std::path::Path) -> CustodianRecipient {
    let out = tool("age-keygen").arg("-o").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // age-keygen prints "Public key: age1..." on stderr.
    let text = String::from_utf8_lossy(&out.stderr);
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("Public key: "))
        .expect("age-keygen printed the public key");
    CustodianRecipient::parse(public).unwrap()
}

async fn keyring_opens_with_real_age_tools(backend: Backend) {
    let stores = TestStores::new(backend).await;
    let dir = stores.dir.path();
    let (key, other) = (dir.join("custodian.txt"), dir.join("stranger.txt"));
    let recipient = age_keygen(&key);
    age_keygen(&other);

    let s = stores.open().await;
    Vault::init_keyring(
        &s,
        &catalog(),
        &SealTo::Recipients(vec![recipient]),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    // A second init must not overwrite the keyring.
    let again = Vault::init_keyring(
        &s,
        &catalog(),
        &SealTo::Recipients(vec![Unlock::generate_identity().1]),
        chrono::Utc::now(),
    )
    .await
    .unwrap_err();
    assert!(matches!(again, VaultError::KeyringExists), "{again:?}");

    // The stranger's identity does not unseal it.
    let err = Vault::open(
        s.clone(),
        vault_tests::policy().await,
        Unlock::identity_file(&other).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, VaultError::Keyring(KeyringError::Unseal(_))),
        "{err:?}"
    );
    // The custodian's does.
    let vault = Vault::open(
        s.clone(),
        vault_tests::policy().await,
        Unlock::identity_file(&key).unwrap(),
    )
    .await
    .unwrap();
    drop(vault);

    // The real age tool opens the stored file and finds a vault keyring inside.
    let sealed = Vault::sealed_keyring(&s).await.unwrap();
    let file = dir.join("keyring.age");
    std::fs::write(&file, &sealed).unwrap();
    let out = tool("age")
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "age -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.starts_with(b"SCHOOL-VAULT-KEYRING\0"));
    let out = tool("age")
        .arg("-d")
        .arg("-i")
        .arg(&other)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a stranger's key must not open the keyring"
    );

    // A missing or empty identity file gets an error that names the file.
    let err = Unlock::identity_file(&dir.join("nope.txt")).err().unwrap();
    assert!(err.to_string().contains("nope.txt"), "{err}");
    std::fs::write(dir.join("empty.txt"), "# nothing\n").unwrap();
    let err = Unlock::identity_file(&dir.join("empty.txt")).err().unwrap();
    assert!(err.to_string().contains("empty.txt"), "{err}");
}
