//! The few protobuf messages etcd stores in its backend, decoded and
//! encoded by hand (the node binary has no protobuf library: `prost` is
//! only in the gRPC shim). Field numbers are etcd 3.4's `mvccpb.KeyValue`,
//! `leasepb.Lease`, `authpb.User`, `authpb.Role` and `authpb.Permission`.
//! Decoding is total: any bytes give a message or an error; unknown fields
//! are skipped as protobuf requires.

/// What the import keeps of an `mvccpb.KeyValue`: the key is returned
/// borrowed beside it, and `mod_revision` is the revision it is stored
/// under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub create_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

/// `leasepb.Lease`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
}

/// `authpb.Permission` (`perm_type`: 0 READ, 1 WRITE, 2 READWRITE).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permission {
    pub perm_type: i32,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

/// `authpb.User`; `password` is the bcrypt hash etcd stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub name: Vec<u8>,
    pub password: Vec<u8>,
    pub roles: Vec<String>,
    pub no_password: bool,
}

/// `authpb.Role`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Role {
    pub name: Vec<u8>,
    pub permissions: Vec<Permission>,
}

/// One field as read: its number and its payload.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first().ok_or("truncated varint")?;
            self.0 = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "length overflows")?;
        if n > self.0.len() {
            return Err(format!("field of {n} bytes past the message end"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let field = match tag & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Other
            }
            2 => {
                let len = self.varint()?;
                Field::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Field::Other
            }
            t => return Err(format!("wire type {t} not supported")),
        };
        Ok(Some((tag >> 3, field)))
    }
}

fn each_field<'a>(
    bytes: &'a [u8],
    mut f: impl FnMut(u64, Field<'a>) -> Result<(), String>,
) -> Result<(), String> {
    let mut r = Reader(bytes);
    while let Some((number, field)) = r.field()? {
        f(number, field)?;
    }
    Ok(())
}

fn wrong(number: u64) -> String {
    format!("field {number} has the wrong wire type")
}

impl KeyValue {
    /// The key (borrowed from `bytes`, so the import groups changes by key
    /// without copying it) and the rest.
    pub fn decode(bytes: &[u8]) -> Result<(&[u8], KeyValue), String> {
        let mut key: &[u8] = &[];
        let mut kv = KeyValue::default();
        each_field(bytes, |n, f| {
            match (n, f) {
                (1, Field::Bytes(b)) => key = b,
                (2, Field::Varint(v)) => kv.create_revision = v as i64,
                (3, Field::Varint(_)) => {}
                (4, Field::Varint(v)) => kv.version = v as i64,
                (5, Field::Bytes(b)) => kv.value = b.to_vec(),
                (6, Field::Varint(v)) => kv.lease = v as i64,
                (1..=6, _) => return Err(wrong(n)),
                _ => {}
            }
            Ok(())
        })?;
        Ok((key, kv))
    }
}

impl Lease {
    pub fn decode(bytes: &[u8]) -> Result<Lease, String> {
        let mut lease = Lease::default();
        each_field(bytes, |n, f| {
            match (n, f) {
                (1, Field::Varint(v)) => lease.id = v as i64,
                (2, Field::Varint(v)) => lease.ttl = v as i64,
                (1 | 2, _) => return Err(wrong(n)),
                _ => {}
            }
            Ok(())
        })?;
        Ok(lease)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        put_int(out, 1, self.id);
        put_int(out, 2, self.ttl);
    }
}

impl Permission {
    fn decode(bytes: &[u8]) -> Result<Permission, String> {
        let mut p = Permission::default();
        each_field(bytes, |n, f| {
            match (n, f) {
                (1, Field::Varint(v)) => p.perm_type = v as i32,
                (2, Field::Bytes(b)) => p.key = b.to_vec(),
                (3, Field::Bytes(b)) => p.range_end = b.to_vec(),
                (1..=3, _) => return Err(wrong(n)),
                _ => {}
            }
            Ok(())
        })?;
        Ok(p)
    }
}

impl User {
    pub fn decode(bytes: &[u8]) -> Result<User, String> {
        let mut u = User::default();
        each_field(bytes, |n, f| {
            match (n, f) {
                (1, Field::Bytes(b)) => u.name = b.to_vec(),
                (2, Field::Bytes(b)) => u.password = b.to_vec(),
                (3, Field::Bytes(b)) => u
                    .roles
                    .push(String::from_utf8(b.to_vec()).map_err(|_| "role name is not UTF-8")?),
                (4, Field::Bytes(b)) => each_field(b, |n, f| {
                    if let (1, Field::Varint(v)) = (n, f) {
                        u.no_password = v != 0;
                    }
                    Ok(())
                })?,
                (1..=4, _) => return Err(wrong(n)),
                _ => {}
            }
            Ok(())
        })?;
        Ok(u)
    }
}

impl Role {
    pub fn decode(bytes: &[u8]) -> Result<Role, String> {
        let mut r = Role::default();
        each_field(bytes, |n, f| {
            match (n, f) {
                (1, Field::Bytes(b)) => r.name = b.to_vec(),
                (2, Field::Bytes(b)) => r.permissions.push(Permission::decode(b)?),
                (1 | 2, _) => return Err(wrong(n)),
                _ => {}
            }
            Ok(())
        })?;
        Ok(r)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An int64 field, omitted when 0 (proto3).
fn put_int(out: &mut Vec<u8>, number: u64, v: i64) {
    if v != 0 {
        put_varint(out, number << 3);
        put_varint(out, v as u64);
    }
}

/// A bytes field, omitted when empty (proto3).
fn put_bytes(out: &mut Vec<u8>, number: u64, b: &[u8]) {
    if !b.is_empty() {
        put_varint(out, (number << 3) | 2);
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

fn put_message(out: &mut Vec<u8>, number: u64, body: &[u8]) {
    put_varint(out, (number << 3) | 2);
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

impl User {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_bytes(out, 1, &self.name);
        put_bytes(out, 2, &self.password);
        for role in &self.roles {
            put_message(out, 3, role.as_bytes());
        }
        if self.no_password {
            put_message(out, 4, &[0x08, 1]);
        }
    }
}

impl Role {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_bytes(out, 1, &self.name);
        for p in &self.permissions {
            let mut body = Vec::new();
            put_int(&mut body, 1, i64::from(p.perm_type));
            put_bytes(&mut body, 2, &p.key);
            put_bytes(&mut body, 3, &p.range_end);
            put_message(out, 2, &body);
        }
    }
}

/// Encodes an `mvccpb.KeyValue` from its parts, as etcd's marshaller
/// does (fields in number order, defaults omitted).
pub fn encode_key_value(
    out: &mut Vec<u8>,
    key: &[u8],
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    value: &[u8],
    lease: i64,
) {
    put_bytes(out, 1, key);
    put_int(out, 2, create_revision);
    put_int(out, 3, mod_revision);
    put_int(out, 4, version);
    put_bytes(out, 5, value);
    put_int(out, 6, lease);
}
