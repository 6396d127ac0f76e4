// Module lint pins golangci-lint for `make lint`, apart from meshca's own
// dependencies.
module github.com/meshca/meshca/tools/lint

go 1.26.8

tool github.com/golangci/golangci-lint/v2/cmd/golangci-lint

require github.com/golangci/golangci-lint/v2 v2.15.0 // indirect
