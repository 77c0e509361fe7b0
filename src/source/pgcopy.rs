//! PostgreSQL's binary `COPY` format, split into rows and fields over borrowed bytes. Written here
//! rather than using tokio-postgres' `BinaryCopyOutStream` because that allocates a vector per row
//! and type-checks every cell, which showed up in profiles of million-row extractions; this parser
//! allocates nothing and leaves the decoding of each value to the caller. It knows the format only,
//! not connections or Arrow.

/// The 11-byte signature every binary COPY stream starts with.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// What the start of the unread bytes holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// The stream header, this many bytes long.
    Header(usize),
    /// One complete row, this many bytes long (its fields are read with [`fields`]).
    Row(usize),
    /// The trailer that ends the data.
    End,
}

/// Reads the items of one COPY stream with `columns` fields per row.
pub struct CopyParser {
    columns: usize,
    header_seen: bool,
}

impl CopyParser {
    pub fn new(columns: usize) -> CopyParser {
        CopyParser { columns, header_seen: false }
    }

    /// The item at the start of `data`, or `None` if `data` holds only part of it.
    pub fn next_item(&mut self, data: &[u8]) -> Result<Option<Item>, String> {
        if !self.header_seen {
            if data.len() < SIGNATURE.len() + 8 {
                return Ok(None);
            }
            if &data[..SIGNATURE.len()] != SIGNATURE {
                return Err("not a binary COPY stream (bad signature)".into());
            }
            let extension = be_i32(&data[SIGNATURE.len() + 4..]);
            let len = SIGNATURE.len() + 8 + usize::try_from(extension).map_err(|_| "bad header extension length")?;
            if data.len() < len {
                return Ok(None);
            }
            self.header_seen = true;
            return Ok(Some(Item::Header(len)));
        }
        if data.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([data[0], data[1]]);
        if count == -1 {
            return Ok(Some(Item::End));
        }
        if usize::try_from(count).ok() != Some(self.columns) {
            return Err(format!("a row has {count} fields, expected {}", self.columns));
        }
        let mut at = 2;
        for _ in 0..self.columns {
            if data.len() < at + 4 {
                return Ok(None);
            }
            let len = be_i32(&data[at..]);
            at += 4;
            if len >= 0 {
                at += len as usize;
            }
        }
        Ok(if data.len() < at { None } else { Some(Item::Row(at)) })
    }
}

/// The fields of a complete row (as returned by [`Item::Row`]): `None` for SQL NULL.
pub fn fields(row: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    let mut at = 2;
    std::iter::from_fn(move || {
        let len = be_i32(row.get(at..at + 4)?);
        at += 4;
        if len < 0 {
            return Some(None);
        }
        let value = &row[at..at + len as usize];
        at += len as usize;
        Some(Some(value))
    })
}

fn be_i32(bytes: &[u8]) -> i32 {
    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(rows: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&4i32.to_be_bytes());
        out.extend_from_slice(b"ext!");
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for field in *row {
                match field {
                    Some(v) => {
                        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        out.extend_from_slice(v);
                    }
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    /// Feeds `data` in pieces of `piece` bytes, as a network would, and collects the rows.
    fn parse_in_pieces(data: &[u8], columns: usize, piece: usize) -> Vec<Vec<Option<Vec<u8>>>> {
        let mut parser = CopyParser::new(columns);
        let (mut pending, mut rows, mut ended) = (Vec::new(), Vec::new(), false);
        for chunk in data.chunks(piece) {
            pending.extend_from_slice(chunk);
            let mut pos = 0;
            while let Some(item) = parser.next_item(&pending[pos..]).expect("valid stream") {
                match item {
                    Item::Header(len) => pos += len,
                    Item::Row(len) => {
                        rows.push(fields(&pending[pos..pos + len]).map(|f| f.map(<[u8]>::to_vec)).collect());
                        pos += len;
                    }
                    Item::End => {
                        ended = true;
                        pos = pending.len();
                        break;
                    }
                }
            }
            pending.drain(..pos);
        }
        assert!(ended, "trailer seen");
        rows
    }

    #[test]
    fn rows_split_across_any_boundary() {
        let data = stream(&[&[Some(b"ab"), None, Some(b"")], &[None, Some(b"xyz"), Some(&[0, 1, 2, 3])]]);
        let expected = vec![
            vec![Some(b"ab".to_vec()), None, Some(Vec::new())],
            vec![None, Some(b"xyz".to_vec()), Some(vec![0, 1, 2, 3])],
        ];
        for piece in 1..=data.len() {
            assert_eq!(parse_in_pieces(&data, 3, piece), expected, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn wrong_field_count_and_signature_are_errors() {
        let data = stream(&[&[Some(b"ab")]]);
        let mut parser = CopyParser::new(2);
        let Ok(Some(Item::Header(len))) = parser.next_item(&data) else { panic!("header") };
        assert!(parser.next_item(&data[len..]).unwrap_err().contains("1 fields, expected 2"));
        assert!(CopyParser::new(1).next_item(b"PGCOPY\nXXXXXXXXXXXXXXXX").unwrap_err().contains("signature"));
    }
}
