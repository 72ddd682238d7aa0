//! Tenancy (SPEC §7, §12): who may call what. [`admin`], the admin API that manages the tenant
//! registry over HTTP; [`gate`], the token check on the request path. (The tenant ids and the
//! ownership rule are to move in here too.)

pub mod admin;
pub mod gate;
