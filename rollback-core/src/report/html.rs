//! The report as one self-contained HTML page (stub).

use super::RunReport;

impl RunReport {
    /// The report as one self-contained HTML page.
    pub fn to_html(&self) -> String {
        String::new()
    }
}
