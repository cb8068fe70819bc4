"""One run's life: its specification resolved once (`spec`), planned (`planning`), trained
(`session`, `train`, `checkpoint`, `lock`, `signals`), evaluated (`evaluate`, `reevaluate`)
and recorded (`record`); `execute.run` runs it end to end. Nothing is imported here, so the
torch-free modules (`spec`, `lock`, `signals`) stay light."""
