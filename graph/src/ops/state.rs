//! State: assigning a new value to a variable.

use crate::shape::TensorType;

/// Shape rule of assign: the value has exactly the variable's type.
pub fn infer_assign(var: &TensorType, value: &TensorType) -> Result<TensorType, String> {
    if var != value {
        return Err(format!(
            "value of type {value} does not match the variable's type {var}"
        ));
    }
    Ok(value.clone())
}
