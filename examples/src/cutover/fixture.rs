//! The fixture: customers and their attachments (rows and objects), the flags off.

use super::{reset_storage, Backends, Names, Options, FROM};
use futures::StreamExt;
use rollback_core::Result;
use rollback_flags::{FlagProvider, FlagState};
use rollback_postgres::{quote_ident, quote_literal, Database};
use rollback_s3::{ObjectBackend, PutMode};

/// The deterministic content of attachment `i` of customer `cid`.
pub fn attachment(i: u64, cid: u64) -> (String, Vec<u8>) {
    let ext = ["pdf", "png", "txt", "csv"][(i % 4) as usize];
    let name = format!("file-{i:05}.{ext}");
    let mut body = format!("attachment {i} of customer {cid} ({ext})\n").into_bytes();
    body.extend(std::iter::repeat_n(
        b'a' + (i % 26) as u8,
        200 + (i * 37 % 800) as usize,
    ));
    (name, body)
}

/// The customer an attachment belongs to.
pub fn owner_of(i: u64, customers: u64) -> u64 {
    (i * 7919) % customers.max(1) + 1
}

/// The attachments of the fixture: (row id, customer id, file name, content).
pub fn fixture_files(opts: &Options) -> Vec<(u64, u64, String, Vec<u8>)> {
    (0..opts.attachments)
        .map(|i| {
            let cid = owner_of(i, opts.customers.max(1));
            let (name, body) = attachment(i, cid);
            (i + 1, cid, name, body)
        })
        .collect()
}

/// The database part of the fixture, replacing what an earlier run left: schema
/// `names.schema` with `customers` (id, name, email) and `attachments` (id, customer_id →
/// customers, file_name, size_bytes, blake3).
///
/// # Errors
/// Backend errors.
pub async fn seed_database(db: &Database, names: &Names, opts: &Options) -> Result<()> {
    let s = quote_ident(&names.schema);
    let n = opts.customers.max(1);
    db.execute_batch(&format!(
        "DROP SCHEMA IF EXISTS {s} CASCADE;
         CREATE SCHEMA {s};
         CREATE TABLE {s}.customers (
             id bigint PRIMARY KEY,
             name text NOT NULL,
             email text NOT NULL UNIQUE);
         CREATE TABLE {s}.attachments (
             id bigint PRIMARY KEY,
             customer_id bigint NOT NULL REFERENCES {s}.customers (id),
             file_name text NOT NULL,
             size_bytes integer NOT NULL,
             blake3 text NOT NULL);
         CREATE INDEX attachments_customer ON {s}.attachments (customer_id);
         INSERT INTO {s}.customers (id, name, email)
           SELECT g,
                  (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Ken','Margaret','Donald','Frances','John'])[1 + g % 10]
                    || ' ' ||
                  (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Thompson','Hamilton','Knuth','Allen','Backus'])[1 + (g / 10) % 10],
                  'customer' || g || '@example.com'
           FROM generate_series(1, {n}) g;"
    ))
    .await?;
    let files = fixture_files(opts);
    for chunk in files.chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|(id, cid, name, body)| {
                format!(
                    "({id}, {cid}, {}, {}, '{}')",
                    quote_literal(name),
                    body.len(),
                    blake3::hash(body).to_hex()
                )
            })
            .collect();
        db.execute_batch(&format!(
            "INSERT INTO {s}.attachments (id, customer_id, file_name, size_bytes, blake3) VALUES {}",
            values.join(", ")
        ))
        .await?;
    }
    db.execute_batch(&format!("ANALYZE {s}.customers; ANALYZE {s}.attachments"))
        .await
}

/// The objects of the fixture: storage emptied, then every attachment under
/// `v1/{customer_id}/`.
///
/// # Errors
/// Backend errors.
pub async fn seed_objects(storage: &dyn ObjectBackend, opts: &Options) -> Result<()> {
    reset_storage(storage).await?;
    let puts = futures::stream::iter(fixture_files(opts).into_iter().map(
        |(_, cid, name, body)| async move {
            storage
                .put_object(
                    &format!("{FROM}{cid}/{name}"),
                    body.into(),
                    PutMode::Overwrite,
                )
                .await
                .map(|_| ())
        },
    ))
    .buffer_unordered(16)
    .collect::<Vec<Result<()>>>()
    .await;
    puts.into_iter().collect()
}

/// The flags of the fixture: both off.
///
/// # Errors
/// Backend errors.
pub async fn seed_flags(flags: &dyn FlagProvider, names: &Names) -> Result<()> {
    for flag in [&names.new_name_fields, &names.use_v2_storage] {
        flags.put(flag, &FlagState::off()).await?;
    }
    Ok(())
}

impl Backends {
    /// Lay down the whole fixture ([`seed_database`], [`seed_objects`], [`seed_flags`]),
    /// replacing what an earlier run left.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn seed(&self, opts: &Options) -> Result<()> {
        seed_database(&self.db, &self.names, opts).await?;
        seed_objects(&*self.storage, opts).await?;
        seed_flags(self.flags.as_ref(), &self.names).await
    }
}
