terraform {
  # No providers: the module only computes, so `tofu test` runs it for real, offline.
  required_version = ">= 1.8.0"
}
