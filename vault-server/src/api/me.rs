//! `GET /v1/me`: who the token belongs to.

use super::Res;
use super::auth::Caller;
use super::output::{MeOut, RoleOut, ok};

pub async fn me(who: Caller) -> Res {
    let p = &who.0;
    Ok(ok(MeOut {
        id: p.id().to_string(),
        name: p.name().to_owned(),
        roles: p
            .roles()
            .iter()
            .map(|(sc, r)| RoleOut {
                school: sc.as_str().to_owned(),
                role: r.as_str().to_owned(),
            })
            .collect(),
    }))
}
