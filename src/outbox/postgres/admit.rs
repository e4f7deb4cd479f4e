//! Admissions on PostgreSQL, committed in groups (see [`super::group`]): everything queued
//! (up to [`MAX_GROUP`] messages) is stored in one transaction of set-oriented statements:
//!
//! 1. the advisory lock of every appointment in the group, in one statement, in the order of
//!    the lock keys (so two groups, on any replicas, never wait for each other in a cycle);
//! 2. the known idempotency keys and the latest final of each preliminary's appointment;
//! 3. the outcome of each message, in arrival order, as if admitted one by one: a message
//!    whose keys an earlier message of the group holds is a retransmission of it, and a
//!    preliminary after a final of the group is refused like one after a stored final;
//! 4. ids from the sequences taken after the locks, in arrival order (claims rely on ids
//!    growing with admission order per appointment), then one `INSERT … SELECT unnest(…)`
//!    per table.

use std::collections::HashMap;
use std::sync::Arc;

use super::ADMISSION_LOCKS;
use super::group::Work;
use crate::outbox::{Admission, NewMessage, OutboxError};
use crate::store::postgres::Postgres;

/// The most messages stored in one transaction.
pub(super) const MAX_GROUP: usize = 64;

/// Admissions, written in groups (see [`super::group`]).
pub(super) struct Admissions(pub(super) Arc<Postgres>);

#[async_trait::async_trait]
impl Work for Admissions {
    type Item = NewMessage;
    type Output = Admission;
    async fn run(&self, messages: &[&NewMessage]) -> Result<Vec<Admission>, OutboxError> {
        admit_group(&self.0, messages).await
    }
}

/// A stored result's id: one already in the database, or one of this group's new rows.
#[derive(Clone, Copy)]
enum Ref {
    Stored(i64),
    New(usize),
}

/// What becomes of one message of the group.
enum Plan {
    /// Its results are new rows `first..first + count`.
    Insert {
        first: usize,
        count: usize,
    },
    Duplicate(Vec<Ref>),
    PreliminaryAfterFinal {
        index: usize,
        final_of: Ref,
    },
}

/// One new result row: which message and which of its results.
struct NewRow {
    message: usize,
    result: usize,
}

async fn admit_group(
    pg: &Postgres,
    messages: &[&NewMessage],
) -> Result<Vec<Admission>, OutboxError> {
    let fail = |e| pg.failed("admit", e);
    let mut client = pg.client("admit").await?;
    let tx = client.transaction().await.map_err(fail)?;

    let appointments: Vec<String> = messages
        .iter()
        .flat_map(|m| &m.results)
        .map(|r| format!("{}/{}", r.domain, r.appointment_id))
        .collect();
    tx.query(
        &tx.prepare_cached(
            "SELECT pg_advisory_xact_lock($1, k) FROM (
                 SELECT DISTINCT hashtext(a) AS k FROM unnest($2::text[]) AS a ORDER BY k) s",
        )
        .await
        .map_err(fail)?,
        &[&ADMISSION_LOCKS, &appointments],
    )
    .await
    .map_err(fail)?;

    let keys: Vec<&str> = messages
        .iter()
        .flat_map(|m| &m.results)
        .map(|r| r.key.as_str())
        .collect();
    let known: HashMap<String, i64> = tx
        .query(
            &tx.prepare_cached(
                "SELECT idempotency_key, id FROM outbox_results WHERE idempotency_key = ANY($1)",
            )
            .await
            .map_err(fail)?,
            &[&keys],
        )
        .await
        .map_err(fail)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let (domains, appointment_ids): (Vec<&str>, Vec<&str>) = messages
        .iter()
        .flat_map(|m| &m.results)
        .filter(|r| r.report_status == "preliminary")
        .map(|r| (r.domain.as_str(), r.appointment_id.as_str()))
        .unzip();
    let mut finals: HashMap<(String, String), Ref> = HashMap::new();
    if !domains.is_empty() {
        for row in tx
            .query(
                &tx.prepare_cached(
                    "SELECT domain, appointment_id, max(id) FROM outbox_results
                     WHERE report_status = 'final' AND state IN ('pending', 'submitted')
                       AND (domain, appointment_id) IN (
                           SELECT d, a FROM unnest($1::text[], $2::text[]) AS x(d, a))
                     GROUP BY domain, appointment_id",
                )
                .await
                .map_err(fail)?,
                &[&domains, &appointment_ids],
            )
            .await
            .map_err(fail)?
        {
            finals.insert((row.get(0), row.get(1)), Ref::Stored(row.get(2)));
        }
    }

    // Each message's outcome, in arrival order, as if admitted alone.
    let mut plans = Vec::with_capacity(messages.len());
    let mut rows: Vec<NewRow> = Vec::new();
    let mut new_keys: HashMap<&str, usize> = HashMap::new();
    for (mi, m) in messages.iter().enumerate() {
        let already: Vec<Ref> = m
            .results
            .iter()
            .filter_map(|r| {
                known
                    .get(&r.key)
                    .map(|id| Ref::Stored(*id))
                    .or_else(|| new_keys.get(r.key.as_str()).map(|p| Ref::New(*p)))
            })
            .collect();
        if !already.is_empty() {
            plans.push(Plan::Duplicate(already));
            continue;
        }
        let after_final = m.results.iter().enumerate().find_map(|(index, r)| {
            (r.report_status == "preliminary")
                .then(|| finals.get(&(r.domain.clone(), r.appointment_id.clone())))
                .flatten()
                .map(|f| (index, *f))
        });
        if let Some((index, final_of)) = after_final {
            plans.push(Plan::PreliminaryAfterFinal { index, final_of });
            continue;
        }
        let first = rows.len();
        for (ri, r) in m.results.iter().enumerate() {
            let position = rows.len();
            new_keys.insert(r.key.as_str(), position);
            if r.report_status == "final" {
                finals.insert(
                    (r.domain.clone(), r.appointment_id.clone()),
                    Ref::New(position),
                );
            }
            rows.push(NewRow {
                message: mi,
                result: ri,
            });
        }
        plans.push(Plan::Insert {
            first,
            count: m.results.len(),
        });
    }

    let inserted: Vec<usize> = plans
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p, Plan::Insert { .. }))
        .map(|(mi, _)| mi)
        .collect();
    let mut result_ids: Vec<i64> = Vec::new();
    if !inserted.is_empty() {
        // Taken after the locks, in arrival order: ids grow with admission order.
        let row = tx
            .query_one(
                &tx.prepare_cached(
                    "SELECT bridge_now_ms(),
                         array(SELECT nextval('outbox_messages_id_seq') FROM generate_series(1, $1)),
                         array(SELECT nextval('outbox_results_id_seq') FROM generate_series(1, $2))",
                )
                .await
                .map_err(fail)?,
                &[&(inserted.len() as i32), &(rows.len() as i32)],
            )
            .await
            .map_err(fail)?;
        let now: i64 = row.get(0);
        let mut message_ids: Vec<i64> = row.get(1);
        result_ids = row.get(2);
        message_ids.sort_unstable();
        result_ids.sort_unstable();
        let id_of_message: HashMap<usize, i64> = inserted
            .iter()
            .copied()
            .zip(message_ids.iter().copied())
            .collect();

        let sources: Vec<&str> = inserted
            .iter()
            .map(|&mi| messages[mi].source.as_str())
            .collect();
        let bodies: Vec<&[u8]> = inserted
            .iter()
            .map(|&mi| messages[mi].body.as_slice())
            .collect();
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO outbox_messages (id, source, body, received_at)
                 SELECT id, source, body, $4
                 FROM unnest($1::int8[], $2::text[], $3::bytea[]) AS x(id, source, body)",
            )
            .await
            .map_err(fail)?,
            &[&message_ids, &sources, &bodies, &now],
        )
        .await
        .map_err(fail)?;

        let result = |row: &NewRow| &messages[row.message].results[row.result];
        let message_id: Vec<i64> = rows.iter().map(|r| id_of_message[&r.message]).collect();
        let key: Vec<&str> = rows.iter().map(|r| result(r).key.as_str()).collect();
        let domain: Vec<&str> = rows.iter().map(|r| result(r).domain.as_str()).collect();
        let appointment: Vec<&str> = rows
            .iter()
            .map(|r| result(r).appointment_id.as_str())
            .collect();
        let source_id: Vec<&str> = rows
            .iter()
            .map(|r| messages[r.message].source_id.as_str())
            .collect();
        let group: Vec<i32> = rows.iter().map(|r| result(r).group as i32).collect();
        let status: Vec<&str> = rows
            .iter()
            .map(|r| result(r).report_status.as_str())
            .collect();
        let awaited: Vec<bool> = rows.iter().map(|r| messages[r.message].awaited).collect();
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO outbox_results (id, idempotency_key, message_id, domain,
                     appointment_id, source_id, group_index, report_status, state, received_at,
                     next_attempt_at, updated_at, awaited)
                 SELECT id, k, m, d, a, s, g, st, 'pending', $10, $10, $10, aw
                 FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[], $5::text[],
                             $6::text[], $7::int4[], $8::text[], $9::bool[])
                      AS x(id, k, m, d, a, s, g, st, aw)",
            )
            .await
            .map_err(fail)?,
            &[
                &result_ids,
                &key,
                &message_id,
                &domain,
                &appointment,
                &source_id,
                &group,
                &status,
                &awaited,
                &now,
            ],
        )
        .await
        .map_err(fail)?;

        let mut owner = Vec::new();
        let mut seq = Vec::new();
        let mut names = Vec::new();
        let mut types = Vec::new();
        let mut contents = Vec::new();
        for (position, row) in rows.iter().enumerate() {
            for (s, a) in result(row).attachments.iter().enumerate() {
                owner.push(result_ids[position]);
                seq.push(s as i32);
                names.push(a.file_name.as_str());
                types.push(a.content_type.as_str());
                contents.push(a.content.as_slice());
            }
        }
        if !owner.is_empty() {
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO outbox_attachments (result_id, seq, file_name, content_type, content)
                     SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::bytea[])",
                )
                .await
                .map_err(fail)?,
                &[&owner, &seq, &names, &types, &contents],
            )
            .await
            .map_err(fail)?;
        }
    }
    tx.commit().await.map_err(fail)?;

    let id = |r: Ref| match r {
        Ref::Stored(id) => id,
        Ref::New(position) => result_ids[position],
    };
    Ok(plans
        .into_iter()
        .map(|plan| match plan {
            Plan::Insert { first, count } => Admission::Stored {
                ids: result_ids[first..first + count].to_vec(),
            },
            Plan::Duplicate(refs) => Admission::Duplicate {
                ids: refs.into_iter().map(id).collect(),
            },
            Plan::PreliminaryAfterFinal { index, final_of } => Admission::PreliminaryAfterFinal {
                index,
                final_id: id(final_of),
            },
        })
        .collect())
}
