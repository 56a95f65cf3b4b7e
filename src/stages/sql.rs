//! The optional SQL step: a DataFusion query over the table `input` (the
//! record schema of the sources), run on every batch.
//!
//! Only row-wise queries are accepted (projections, filters, aliases), so that
//! running the query batch by batch gives the same rows as running it over
//! the whole input, memory stays flat, and output order is the input order.
//! Rows the query drops are counted as *filtered*, not rejected.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNode;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::Result;
use crate::stages::{BatchContext, Stage};

pub struct Sql {
    query: String,
    output: SchemaRef,
}

fn context() -> SessionContext {
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_batch_size(1 << 20)
        .with_information_schema(false);
    SessionContext::new_with_config(config)
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

impl Sql {
    /// Plan `query` against `input`; fails with a message for the user when
    /// the query is invalid, not row-wise, or drops what later stages need.
    pub fn new(
        query: &str,
        input: &SchemaRef,
        required: &[&str],
    ) -> std::result::Result<Self, String> {
        let ctx = context();
        let table = MemTable::try_new(input.clone(), vec![vec![]]).map_err(|e| e.to_string())?;
        ctx.register_table("input", Arc::new(table))
            .map_err(|e| e.to_string())?;
        let df = run(ctx.sql(query)).map_err(|e| e.strip_backtrace().to_string())?;
        let plan = df.logical_plan();
        check_row_wise(plan)?;
        let planned = plan.schema().as_arrow().clone();
        // Strings come out as plain Utf8 whatever DataFusion chose inside.
        let fields: Vec<Field> = planned
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::LargeUtf8 | DataType::Utf8View => {
                    f.as_ref().clone().with_data_type(DataType::Utf8)
                }
                _ => f.as_ref().clone(),
            })
            .collect();
        let output = Arc::new(Schema::new(fields));
        for name in required {
            if output.field_with_name(name).is_err() {
                return Err(format!(
                    "the query's result has no column `{name}`, which kiln needs"
                ));
            }
        }
        Ok(Sql {
            query: query.to_string(),
            output,
        })
    }
}

fn check_row_wise(plan: &LogicalPlan) -> std::result::Result<(), String> {
    for expr in plan.expressions() {
        if expr.is_volatile() {
            return Err(format!(
                "`{expr}` is random (volatile); kiln's output must be a function of the input and the seed"
            ));
        }
        let subquery = expr
            .exists(|e| {
                Ok(matches!(
                    e,
                    Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
                ))
            })
            .unwrap_or(true);
        if subquery {
            return Err(
                "subqueries are not row-wise; use a filter on the row's own columns".into(),
            );
        }
    }
    match plan {
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
            plan.inputs().into_iter().try_for_each(check_row_wise)
        }
        LogicalPlan::TableScan(_) => Ok(()),
        other => Err(format!(
            "only row-wise queries (SELECT ... FROM input WHERE ...) are supported, not {}",
            other.display()
        )),
    }
}

impl Stage for Sql {
    fn name(&self) -> &str {
        "sql"
    }

    fn output_schema(&self, _input: &SchemaRef) -> Result<SchemaRef> {
        Ok(self.output.clone())
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let rows_in = batch.num_rows();
        let mut rejected = 0;
        let out = match self.run(batch.clone()) {
            Ok(out) => out,
            Err(_) => {
                // One record made the query fail (a cast, a division by
                // zero): find it row by row, reject it, keep the others.
                let mut parts = Vec::new();
                for row in 0..rows_in {
                    match self.run(batch.slice(row, 1)) {
                        Ok(b) => parts.push(b),
                        Err(e) => {
                            rejected += 1;
                            cx.reject(&batch, row, "query_failed", e.to_string())?;
                        }
                    }
                }
                arrow::compute::concat_batches(&self.output, &parts)?
            }
        };
        cx.filtered += (rows_in - rejected - out.num_rows()) as u64;
        Ok(out)
    }
}

impl Sql {
    /// The query over one batch, in the planned schema.
    fn run(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let ctx = context();
        ctx.register_batch("input", batch)?;
        let batches = run(async { ctx.sql(&self.query).await?.collect().await })?;
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            let columns = b
                .columns()
                .iter()
                .zip(self.output.fields())
                .map(|(c, f)| cast(c, f.data_type()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            out.push(RecordBatch::try_new(self.output.clone(), columns)?);
        }
        Ok(arrow::compute::concat_batches(&self.output, &out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::record_schema;

    #[test]
    fn accepts_filters_and_projections() {
        let schema = record_schema(&["lang".to_string()]);
        let s = Sql::new(
            "SELECT sample_id, upper(text) AS text FROM input WHERE lang = 'en' AND length(text) > 3",
            &schema,
            &["sample_id", "text"],
        )
        .unwrap();
        assert_eq!(
            s.output.field_with_name("text").unwrap().data_type(),
            &DataType::Utf8
        );
    }

    #[test]
    fn refuses_aggregates_and_missing_columns() {
        let schema = record_schema(&[]);
        let e = Sql::new("SELECT count(*) AS n FROM input", &schema, &[])
            .err()
            .unwrap();
        assert!(e.contains("row-wise"), "{e}");
        let e = Sql::new("SELECT text FROM input", &schema, &["sample_id"])
            .err()
            .unwrap();
        assert!(e.contains("sample_id"), "{e}");
        let e = Sql::new("SELECT nope FROM input", &schema, &[])
            .err()
            .unwrap();
        assert!(e.contains("nope"), "{e}");
        let e = Sql::new("SELECT * FROM input WHERE random() < 0.5", &schema, &[])
            .err()
            .unwrap();
        assert!(e.contains("random"), "{e}");
        let q = "SELECT * FROM input WHERE length(text) > (SELECT avg(length(text)) FROM input)";
        let e = Sql::new(q, &schema, &[]).err().unwrap();
        assert!(e.contains("subquer"), "{e}");
    }

    #[test]
    fn a_record_that_breaks_the_query_is_rejected_alone() {
        use crate::rejects::RejectSink;
        use crate::sources::RecordBuilder;
        let schema = record_schema(&["score".to_string()]);
        let q = "SELECT * FROM input WHERE 10 / CAST(score AS INT) > 0";
        let s = Sql::new(q, &schema, &["sample_id"]).unwrap();
        let mut b = RecordBuilder::new(schema.clone(), &["score".to_string()], "f");
        for (i, v) in ["1", "0", "-3", "2"].iter().enumerate() {
            b.push(i as u64, "t", &[Some(v)]);
        }
        let mut rejects = RejectSink::discard();
        let mut cx = BatchContext {
            seed: 0,
            stage: "sql",
            rejects: &mut rejects,
            filtered: 0,
        };
        let out = s.process(b.finish().unwrap().unwrap(), &mut cx).unwrap();
        assert_eq!(out.num_rows(), 2);
        assert_eq!(cx.filtered, 1);
        assert_eq!(rejects.total, 1);
    }
}
