//! Section 1: the table fingerprint against a raw binary COPY (plain and over TLS).

use super::*;

impl Bench {
    /// Section 1: the fingerprint against a raw binary COPY read to nowhere by the same
    /// client; and, when the runner has the TLS-only cluster, the same pair over TLS
    /// (`sslmode=verify-full`), measured in the same repetitions, plain and TLS in turn.
    pub(crate) async fn fingerprint(&self, args: &Args, ds: &Dataset) -> Res<Report> {
        let mut tls_failed = None;
        let tls = match self.pg_tls.as_ref().filter(|_| ds.table == ACCOUNTS) {
            Some(t) => match self.setup_tls(t, args).await {
                Ok(side) => Some(side),
                Err(e) => {
                    let e = crate::chain(&*e);
                    eprintln!("compare: the TLS fingerprint's set-up failed: {e}");
                    tls_failed = Some(e);
                    None
                }
            },
            None => None,
        };
        let cp = self.snapshot_of(ds);
        let ctx = Context::detached();
        copy_out(&self.client, &ds.raw_copy()).await?; // warm the page cache
        let tls_cp = tls
            .as_ref()
            .map(|t| TableSnapshot::new(&t.db, Table::public(ACCOUNTS)));
        if let Some(t) = &tls {
            copy_out(&t.client, RAW_COPY).await?;
        }
        let (mut raw, mut ordered, mut fp) = (Vec::new(), Vec::new(), Vec::new());
        let (mut tls_raw, mut tls_fp) = (Vec::new(), Vec::new());
        let mut bytes = 0;
        let mut tls_bytes = 0;
        let mut digests = BTreeSet::new();
        let mut tls_digests = BTreeSet::new();
        for _ in 0..args.reps {
            let m = Meter::start(&self.client).await;
            bytes = copy_out(&self.client, &ds.raw_copy()).await?;
            raw.push(m.stop().await);
            let m = Meter::start(&self.client).await;
            copy_out(&self.client, &ds.ordered_copy()).await?;
            ordered.push(m.stop().await);
            let m = Meter::start(&self.client).await;
            digests.insert(cp.fingerprint(&ctx).await?);
            fp.push(m.stop().await);
            if let (Some(t), Some(tcp)) = (&tls, &tls_cp) {
                let m = Meter::start(&t.client).await;
                tls_bytes = copy_out(&t.client, RAW_COPY).await?;
                tls_raw.push(m.stop().await);
                let m = Meter::start(&t.client).await;
                tls_digests.insert(tcp.fingerprint(&ctx).await?);
                tls_fp.push(m.stop().await);
            }
        }
        let (raw, ordered, fp) = (med(&raw), med(&ordered), med(&fp));
        let ratio = raw.wall / fp.wall;
        let mut r = Report::default();
        r.push(
            Row::new(
                "1. table fingerprint",
                ds.says(format!(
                    "`{}`, {} rows ({} of binary COPY)",
                    ds.table,
                    fmt_count(ds.rows),
                    fmt_bytes(bytes)
                )),
            )
            .rollback(format!(
                "{} ({})",
                fmt_secs(fp.wall),
                fmt_rate(bytes, fp.wall)
            ))
            .reference(format!(
                "raw `COPY … TO STDOUT (FORMAT binary)` to nowhere: {} ({})",
                fmt_secs(raw.wall),
                fmt_rate(bytes, raw.wall)
            ))
            .ratio(format!("{} the COPY rate", fmt_ratio(ratio)))
            .target("≥ 0.8× the COPY rate", Some(ratio >= 0.8)),
        );
        r.push(
            Row::new(
                "",
                ds.says(format!(
                    "the same COPY in key order (`SELECT … ORDER BY {}`), to nowhere",
                    ds.key
                )),
            )
            .rollback(fmt_secs(fp.wall))
            .reference(format!(
                "{} ({})",
                fmt_secs(ordered.wall),
                fmt_rate(bytes, ordered.wall)
            ))
            .ratio(format!("{} its rate", fmt_ratio(ordered.wall / fp.wall))),
        );
        r.note(format!(
            "{}: fingerprint breakdown (medians): {}; {}; {}",
            ds.label,
            breakdown("fingerprint", fp),
            breakdown("raw COPY", raw),
            breakdown("ordered COPY", ordered)
        ));
        if digests.len() != 1 {
            r.note(format!(
                "**check failed**: the fingerprint of an unchanged table differed between repetitions ({} digests)",
                digests.len()
            ));
        }
        if let Some(e) = tls_failed {
            r.push(Row::new("", "over TLS: failed").rollback(e));
        }
        if let Some(t) = &tls {
            let (tls_raw, tls_fp) = (med(&tls_raw), med(&tls_fp));
            let tls_ratio = tls_raw.wall / tls_fp.wall;
            // What TLS does to the fingerprint relative to the COPY, and to its own rate.
            let change = tls_ratio / ratio;
            r.push(
                Row::new(
                    "",
                    format!(
                        "over TLS (`sslmode=verify-full`, host `localhost`): the same table ({} rows, {} of binary COPY) in a TLS-only cluster",
                        fmt_count(t.rows),
                        fmt_bytes(tls_bytes)
                    ),
                )
                .rollback(format!(
                    "{} ({})",
                    fmt_secs(tls_fp.wall),
                    fmt_rate(tls_bytes, tls_fp.wall)
                ))
                .reference(format!(
                    "raw binary COPY over the same TLS connection: {} ({})",
                    fmt_secs(tls_raw.wall),
                    fmt_rate(tls_bytes, tls_raw.wall)
                ))
                .ratio(format!(
                    "{} the COPY rate (plain: {})",
                    fmt_ratio(tls_ratio),
                    fmt_ratio(ratio)
                ))
                .target("≥ 0.8× the COPY rate", Some(tls_ratio >= 0.8)),
            );
            r.push(
                Row::new(
                    "",
                    "TLS against plain: the fingerprint's rate relative to the COPY's, over TLS ÷ over a plain connection",
                )
                .rollback(format!("over TLS: {}", fmt_ratio(tls_ratio)))
                .reference(format!(
                    "plain: {}; TLS fingerprint {} vs plain {}",
                    fmt_ratio(ratio),
                    fmt_secs(tls_fp.wall),
                    fmt_secs(fp.wall)
                ))
                .ratio(format!(
                    "{:+.1}% (fingerprint rate over TLS: {} the plain one)",
                    (change - 1.0) * 100.0,
                    fmt_ratio(fp.wall / tls_fp.wall)
                ))
                .target(
                    "TLS changes it by < 10%",
                    Some((change - 1.0).abs() < 0.10),
                ),
            );
            r.note(format!(
                "fingerprint over TLS, breakdown (medians): {}; {}; sessions: {}",
                breakdown("fingerprint", tls_fp),
                breakdown("raw COPY", tls_raw),
                t.sessions
            ));
            if tls_digests.len() != 1 {
                r.note(format!(
                    "**check failed**: the fingerprint over TLS of an unchanged table differed between repetitions ({} digests)",
                    tls_digests.len()
                ));
            }
            r.note(format!(
                "the fingerprint over TLS equals the plain cluster's: {}",
                if tls_digests == digests { "yes" } else { "no" }
            ));
        }
        Ok(r)
    }
}
