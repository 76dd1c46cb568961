from nc.bench.suite import main

main()
