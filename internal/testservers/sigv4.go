package testservers

import (
	"context"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// emptySHA256 is the SHA-256 of an empty body.
const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// signV4 signs a bodiless request for S3 in us-east-1.
func signV4(req *http.Request, access, secret string) error {
	req.Header.Set("X-Amz-Content-Sha256", emptySHA256)
	return v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: access, SecretAccessKey: secret},
		req, emptySHA256, "s3", "us-east-1", time.Now())
}
