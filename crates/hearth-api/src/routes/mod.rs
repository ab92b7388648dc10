// SPDX-License-Identifier: Apache-2.0
//! Route handlers, one module per resource.

pub mod logs;
pub mod sandboxes;
pub mod snapshots;
pub mod templates;
