module derpfleet.bench/admission-hook

go 1.26
