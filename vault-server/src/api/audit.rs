//! `GET /v1/audit/verify`: the audit chain and its checkpoints, checked end to end.

use super::auth::Caller;
use super::output::{AuditVerification, ok};
use super::{Res, State};

pub async fn verify_audit(s: State, who: Caller) -> Res {
    let r = who.session(&s).verify_audit().await?;
    Ok(ok(AuditVerification {
        entries: r.entries,
        checkpoints: r.checkpoints,
        intact: r.problem.is_none(),
        problem: r.problem.map(|p| p.to_string()),
    }))
}
