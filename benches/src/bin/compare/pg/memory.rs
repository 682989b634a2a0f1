//! The fingerprint's peak memory on a wide table.

use super::*;

impl Bench {
    /// 6. Peak RSS of fingerprinting 10M × scale rows, per child process.
    pub(crate) async fn memory(&self, args: &Args) -> Res<Report> {
        let n = ((10_000_000.0 * args.scale).round() as u64).max(1000);
        let t = Instant::now();
        self.client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {MEM_TABLE}; \
                 CREATE TABLE {MEM_TABLE} (aid integer NOT NULL, bid integer NOT NULL, abalance integer NOT NULL, filler character(84)); \
                 INSERT INTO {MEM_TABLE} SELECT g, (g - 1) / 100000 + 1, 0, '' FROM generate_series(1, {n}) g; \
                 ALTER TABLE {MEM_TABLE} ADD PRIMARY KEY (aid)"
            ))
            .await?;
        self.client
            .batch_execute(&format!("VACUUM ANALYZE {MEM_TABLE}"))
            .await?;
        eprintln!(
            "compare: {} rows for the memory test made in {}",
            fmt_count(n),
            fmt_secs(secs(t))
        );
        let idle = run_child(&["idle".into()], &[]).await?;
        let copy = run_child(&["copy".into(), self.url.clone(), MEM_TABLE.into()], &[]).await?;
        let fp = run_child(
            &["fingerprint".into(), self.url.clone(), MEM_TABLE.into()],
            &[],
        )
        .await?;
        self.client
            .batch_execute(&format!("DROP TABLE IF EXISTS {MEM_TABLE}"))
            .await?;
        let kib = |v: &serde_json::Value| v["peak_rss_kib"].as_u64().unwrap_or(0);
        let mut r = Report::default();
        let peak = kib(&fp) * 1024;
        r.push(
            Row::new(
                "6. peak memory",
                format!("fingerprint of {} rows", fmt_count(n)),
            )
            .rollback(format!(
                "{} ({})",
                fmt_bytes(peak),
                fmt_secs(fp["secs"].as_f64().unwrap_or(0.0))
            ))
            .reference(format!(
                "raw COPY client: {}; idle process: {}",
                fmt_bytes(kib(&copy) * 1024),
                fmt_bytes(kib(&idle) * 1024)
            ))
            .target("< 100 MiB", Some(peak < 100 * 1024 * 1024)),
        );
        Ok(r)
    }
}
