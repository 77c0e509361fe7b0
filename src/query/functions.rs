//! SQL functions the engine adds to DataFusion. `pseudonym(text)` replaces an identifier with a
//! stable keyed hash, so that marts can join on people without revealing who they are. It holds no
//! state but its key, and the key never appears in output, errors or `Debug`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Bytes of the HMAC kept: 128 bits, shown as 32 hex digits, leave collisions out of reach for any
/// number of people a collective will ever hold.
const PSEUDONYM_BYTES: usize = 16;

/// `pseudonym(value)`: hex of HMAC-SHA256(key, value), truncated; NULL stays NULL.
#[derive(PartialEq, Eq, Hash)]
struct Pseudonym {
    key: Vec<u8>,
    signature: Signature,
}

impl std::fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("pseudonym(<key withheld>)")
    }
}

/// The `pseudonym` function with its key.
pub fn pseudonym(key: &[u8]) -> ScalarUDF {
    ScalarUDF::from(Pseudonym {
        key: key.to_vec(),
        signature: Signature::one_of(
            vec![TypeSignature::Exact(vec![DataType::Utf8]), TypeSignature::Exact(vec![DataType::Utf8View])],
            Volatility::Immutable,
        ),
    })
}

/// The pseudonym of one value under `key`, as `pseudonym(value)` gives it in SQL.
pub fn pseudonym_of(key: &[u8], value: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(value.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..PSEUDONYM_BYTES])
}

impl Pseudonym {
    fn hash(&self, value: &str) -> String {
        pseudonym_of(&self.key, value)
    }
}

impl ScalarUDFImpl for Pseudonym {
    fn name(&self) -> &str {
        "pseudonym"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [value] = args.args.as_slice() else { return exec_err!("pseudonym takes one argument") };
        let input = value.to_array(args.number_rows)?;
        let mut out = StringBuilder::with_capacity(input.len(), input.len() * PSEUDONYM_BYTES * 2);
        let mut push = |v: Option<&str>| match v {
            Some(v) => out.append_value(self.hash(v)),
            None => out.append_null(),
        };
        match input.data_type() {
            DataType::Utf8 => input.as_string::<i32>().iter().for_each(&mut push),
            DataType::Utf8View => input.as_string_view().iter().for_each(&mut push),
            other => return exec_err!("pseudonym takes text, not {other}"),
        }
        let array: ArrayRef = Arc::new(out.finish());
        Ok(ColumnarValue::Array(array))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    #[tokio::test]
    async fn pseudonyms_are_stable_keyed_and_null_safe() {
        let ctx = SessionContext::new();
        ctx.register_udf(pseudonym(b"key one"));
        let sql = "SELECT pseudonym('CL-00001') a, pseudonym('CL-00001') b, pseudonym('CL-00002') c, pseudonym(NULL) d";
        let batches = ctx.sql(sql).await.expect("plan").collect().await.expect("run");
        let row = |i: usize| batches[0].column(i).as_string::<i32>().iter().next().flatten().map(str::to_string);
        let first = row(0).expect("a pseudonym");
        assert_eq!(first.len(), 32);
        assert_eq!(row(1).as_deref(), Some(first.as_str()));
        assert_ne!(row(2).as_deref(), Some(first.as_str()));
        assert_eq!(row(3), None);
        let other = Pseudonym { key: b"key two".to_vec(), signature: Signature::any(1, Volatility::Immutable) };
        assert_ne!(other.hash("CL-00001"), first);
        assert_eq!(format!("{:?}", pseudonym(b"key one").inner()), "pseudonym(<key withheld>)");
    }
}
