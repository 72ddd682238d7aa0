-- POST the sample-one body to the URL given on the wrk command line.
wrk.method = "POST"
wrk.body = '{"args":[1,2,3,4,5,6],"name1":"one","name2":"two","name3":"three","name4":"four"}'
wrk.headers["Content-Type"] = "application/json"
