//! The inventory report: a job taken off the request path by a background [`Worker`].
//!
//! Adding a dam answers the form at once; the report (how many dams, per owner, the oldest and
//! the newest) is recomputed from the whole table by a worker consuming the named channel
//! [`REPORT_CHANNEL`], which `group_send`s the result to [`REPORT_GROUP`], where the report
//! sockets (`/dams/report/ws/`) listen. The protocol is in the example's README.
//!
//! On the Redis core layer several dams processes (or `dams runworker` processes) share the
//! channel: each job is done by one of them. On the pub/sub layer every process does every job
//! (the results are the same). A failed job is logged and not retried (at most once, as in
//! Channels): the next add recomputes the report anyway.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard::worker::{Worker, WorkerContext};
use switchboard::{Connection, Consumer, Error, Frame, Layer, Result};

use crate::db::Db;

/// The named channel the report jobs are sent to.
pub const REPORT_CHANNEL: &str = "dams-report";

/// The group the finished reports are sent to.
pub const REPORT_GROUP: &str = "dams-report";

/// What [`REPORT_CHANNEL`] carries.
#[derive(Deserialize, Debug)]
#[serde(tag = "type")]
pub enum ReportJob {
    /// Recompute the report from the database.
    #[serde(rename = "report.recompute")]
    Recompute {
        /// Why (`"dam added"`), echoed in the report.
        reason: String,
    },
}

/// One dam as the report names it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DamRef {
    /// Its name.
    pub name: String,
    /// When it was completed: YYYY-MM-DD.
    pub built: String,
}

/// What [`REPORT_GROUP`] carries, and what a report socket sends its page.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename = "report.ready")]
pub struct Report {
    /// The job's reason.
    pub reason: String,
    /// How many dams are stored.
    pub dams: usize,
    /// How many dams each owner has, by owner.
    pub owners: BTreeMap<String, usize>,
    /// The oldest dam, if any.
    pub oldest: Option<DamRef>,
    /// The newest dam, if any.
    pub newest: Option<DamRef>,
}

/// The report over `db`'s dams.
pub async fn compute(db: &Db, reason: String) -> std::result::Result<Report, crate::db::DbError> {
    let dams = db.dams().await?;
    let mut owners = BTreeMap::new();
    for d in &dams {
        *owners.entry(d.owner.clone()).or_insert(0) += 1;
    }
    // Dates are YYYY-MM-DD: their text order is their time order.
    let by_date = |d: &crate::dam::Dam| (d.built.clone(), d.name.clone());
    let as_ref = |d: &crate::dam::Dam| DamRef {
        name: d.name.clone(),
        built: d.built.clone(),
    };
    Ok(Report {
        reason,
        dams: dams.len(),
        owners,
        oldest: dams.iter().min_by_key(|d| by_date(d)).map(as_ref),
        newest: dams.iter().max_by_key(|d| by_date(d)).map(as_ref),
    })
}

/// The worker that recomputes the report: one job at a time (jobs are cheap and the latest
/// wins, so there is nothing to gain from running several).
pub fn worker(db: Db, layer: Layer) -> Worker {
    Worker::new(layer).channel(REPORT_CHANNEL, move |ctx: WorkerContext, job: ReportJob| {
        let db = db.clone();
        async move {
            let ReportJob::Recompute { reason } = job;
            let report = compute(&db, reason).await.map_err(Error::other)?;
            ctx.group_send(REPORT_GROUP, switchboard::Message::from_serialize(&report)?)
                .await
        }
    })
}

/// Asks the workers for a new report (`reason` says why). Fails if the channel is full: the
/// workers are not keeping up, and the next request asks again.
pub async fn request(
    layer: &Layer,
    reason: &str,
) -> std::result::Result<(), switchboard::LayerError> {
    layer
        .send(
            REPORT_CHANNEL,
            json!({"type": "report.recompute", "reason": reason}),
        )
        .await
}

/// One report socket: joins [`REPORT_GROUP`] and relays each report to its page.
#[derive(Debug)]
pub struct ReportConsumer;

impl Consumer for ReportConsumer {
    type Incoming = Frame;
    type Event = Report;

    async fn connect(&mut self, conn: &mut Connection) -> Result<()> {
        conn.group_add(REPORT_GROUP).await?;
        conn.accept().await
    }

    async fn receive(&mut self, _conn: &mut Connection, _frame: Frame) -> Result<()> {
        Err(Error::protocol("this socket only sends reports"))
    }

    async fn event(&mut self, conn: &mut Connection, report: Report) -> Result<()> {
        conn.send_json(&report).await
    }
}
