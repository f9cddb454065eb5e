//! `GET /v1/me`: who the token belongs to.

use serde_json::json;

use super::Res;
use super::auth::Caller;
use super::output::ok;

pub async fn me(who: Caller) -> Res {
    let p = &who.0;
    Ok(ok(json!({ "id": p.id().to_string(), "name": p.name(),
        "roles": p.roles().iter().map(|(sc, r)| json!({ "school": sc.as_str(), "role": r.as_str() })).collect::<Vec<_>>() })))
}
