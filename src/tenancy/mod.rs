//! Tenancy (SPEC §7): who may call what. So far: [`admin`], the admin API that manages the
//! tenant registry over HTTP. (The tenant ids, the ownership rule, tokens and the replay ledger
//! are to move in here too.)

pub mod admin;
