//! The boundary between the request pipeline and running plugin code (issue 11's seam, in
//! progress). Only plain data lives here, so the route table can refer to it without depending on
//! the embedded Python: [`outcome`], what a call produced, [`code`], the opaque reference
//! to a module's loaded code that only its executor opens, and [`schedule`], where a call runs,
//! learnt from call times.

pub mod code;
pub mod load;
pub mod outcome;
pub mod schedule;
pub mod wire;

pub use code::CodeRef;
pub use load::{
    Description, EndpointDescription, FinderEntry, LoadRequest, Loaded, Loader, Report,
};
pub use outcome::{CallFailure, CallResult, Outcome};
pub use schedule::Schedule;
