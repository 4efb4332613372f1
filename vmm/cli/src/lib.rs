// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `pinvmm` command line's parts that are not `main`: config files.

pub mod config_file;
