# Data stages: simulate the built-in data set (optional), then validate whatever data is used.


rule simulate_dataset:
    output:
        train=directory(f"{SYNTHETIC_ROOT}/train"),
        val=directory(f"{SYNTHETIC_ROOT}/val"),
        users=f"{SYNTHETIC_ROOT}/users.json",
    log:
        "results/logs/simulate_dataset.log",
    benchmark:
        "results/benchmarks/simulate_dataset.tsv"
    conda:
        "../envs/mdgen.yaml"
    threads: 8
    resources:
        **config["resources"]["simulate_dataset"],
    params:
        out=lambda wildcards, output: Path(output.users).parent,
        config=stage_config("simulator"),
    shell:
        "python -m mdgen.stages.simulate_dataset --out {params.out} --config {params.config:q}"
        " --workers {threads} > {log} 2>&1"


rule validate_dataset:
    input:
        dataset_files,
    output:
        manifest="results/dataset/manifest.csv",
        report="results/dataset/report.json",
    log:
        "results/logs/validate_dataset.log",
    benchmark:
        "results/benchmarks/validate_dataset.tsv"
    conda:
        "../envs/mdgen.yaml"
    threads: 4
    resources:
        **config["resources"]["validate_dataset"],
    params:
        root=dataset_root(),
        config=stage_config(
            data=(
                "num_classes",
                "size",
                "channels",
                "colormap",
                "on_bad_file",
                "max_pixels",
            )
        ),
    shell:
        "python -m mdgen.stages.validate_dataset --root {params.root:q} --config {params.config:q}"
        " --workers {threads} --manifest {output.manifest} --report {output.report} > {log} 2>&1"
