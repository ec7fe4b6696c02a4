//! CUDA graphs for decode steps: a dry run hashes a pass's launches, and a pass that launches
//! what a captured one did replays its graph instead.

use cudarc::driver::sys;

use super::launch::{CudaOps, Mode};
use super::{drv, BackendError, CudaBackend};
use crate::ops::Batch;

/// Graphs kept (decode of the trunk, of an MTP block, ...).
pub(super) const MAX_GRAPHS: usize = 8;

/// A captured decode pass and the hash of the launches it was captured from.
pub(super) struct Graph {
    pub(super) hash: u64,
    pub(super) graph: cudarc::driver::CudaGraph,
}

impl CudaBackend {
    /// A one-token pass through a graph: hashes the launches of a dry run, replays the graph
    /// captured for that hash or captures one. Returns whether a recurrent op ran.
    pub(super) fn forward_graph<F>(&mut self, batch: &Batch, f: &F) -> Result<bool, BackendError>
    where
        F: Fn(&CudaOps),
    {
        let dry = CudaOps::new(self, batch, Mode::Hash);
        f(&dry);
        let hash = dry.hash.get();
        let blas = dry.used_blas.get();
        let touched = dry.result()?;
        if blas {
            let ops = CudaOps::new(self, batch, Mode::Launch);
            f(&ops);
            return ops.result();
        }
        if let Some(g) = self.graphs.iter().find(|g| g.hash == hash) {
            g.graph.launch().map_err(drv("replaying a decode graph"))?;
            return Ok(touched);
        }
        let stream = self.dev.stream.clone();
        let captured = (|| -> Result<Option<cudarc::driver::CudaGraph>, String> {
            stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(|e| format!("begin capture: {e}"))?;
            let ops = CudaOps::new(self, batch, Mode::Launch);
            f(&ops);
            let res = ops.result();
            let g = stream
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .map_err(|e| format!("end capture: {e}"));
            res.map_err(|e| e.to_string())?;
            g
        })();
        match captured {
            Ok(Some(graph)) => {
                graph
                    .launch()
                    .map_err(drv("launching a new decode graph"))?;
                if self.graphs.len() >= MAX_GRAPHS {
                    self.graphs.remove(0);
                }
                self.graphs.push(Graph { hash, graph });
                Ok(touched)
            }
            Ok(None) | Err(_) => {
                // Capturing failed: turn graphs off and run the pass plainly.
                self.graph_note = Some(match captured {
                    Err(e) => format!("CUDA graphs off: {e}"),
                    _ => "CUDA graphs off: the capture was empty".into(),
                });
                self.graphs_on = false;
                let ops = CudaOps::new(self, batch, Mode::Launch);
                f(&ops);
                ops.result()
            }
        }
    }
}
