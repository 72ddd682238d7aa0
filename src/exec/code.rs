//! [`CodeRef`]: how the route table refers to loaded code without knowing what runs it.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// An opaque reference to one module's loaded code, made by the executor that loaded it and
/// opened only by that executor (the in-process one keeps its Python objects inside; a sandboxed
/// one would keep the tenant process's module id). The route table stays plain data: it holds
/// the reference, never the type behind it. Dropping the last clone frees the code, exactly as
/// the route table's modules are dropped after a reload.
#[derive(Clone)]
pub struct CodeRef(Arc<dyn Any + Send + Sync>);

impl CodeRef {
    pub fn new<T: Any + Send + Sync>(code: T) -> CodeRef {
        CodeRef(Arc::new(code))
    }

    /// The code as the executor that made it knows it; `None` for another executor's reference.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl fmt::Debug for CodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeRef(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_maker_type_opens_it() {
        let code = CodeRef::new(7_u32);
        assert_eq!(code.get::<u32>(), Some(&7));
        assert!(code.get::<String>().is_none());
        let copy = code.clone();
        assert_eq!(copy.get::<u32>(), Some(&7));
    }
}
