//! Who may see what: the policy (one decision), the principals, consents, approvals and
//! break-glass it decides on, the scoped operations built on it, and the `Session` that is the
//! crate's one door to personal data.

pub(crate) mod model;
pub(crate) mod ops;
pub(crate) mod policy;
pub(crate) mod session;
pub(crate) mod transfer;
